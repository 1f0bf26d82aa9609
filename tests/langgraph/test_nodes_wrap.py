"""Guarding what ``add_node`` accepts besides functions: a ``ToolNode`` and a compiled
subgraph are wrapped (their ``invoke``/``ainvoke`` called with the node's config)."""

from typing import Annotated, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, interrupt

from sil_core import DictConfigAdapter, Guard
from sil_langgraph import add_guarded_node, guarded_node, node_config


class M(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


class S(TypedDict, total=False):
    x: int
    out: str


@pytest.fixture(params=[0, 60], ids=["general-path", "fast-lane"])
def guard(request):
    g = Guard("memory://", flush_interval=60, refresh_interval=request.param)
    yield g
    g.close()


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def fail(a: int) -> int:
    """Always fails."""
    raise RuntimeError("tool broke")


def _call(name, args, id_="c1"):
    return {"messages": [HumanMessage("hi"), AIMessage("", tool_calls=[{"name": name, "args": args, "id": id_}])]}


def _tool_graph(guard):
    b = StateGraph(M)
    add_guarded_node(b, "tools", ToolNode([add, fail], handle_tool_errors=False), guard=guard)
    b.add_edge(START, "tools")
    b.add_edge("tools", END)
    return b.compile()


def test_a_tool_node_is_guarded_sync_and_async(guard):
    graph = _tool_graph(guard)
    for _ in range(2):
        out = graph.invoke(_call("add", {"a": 2, "b": 3}))
        assert isinstance(out["messages"][-1], ToolMessage) and out["messages"][-1].content == "5"
    with pytest.raises(RuntimeError, match="tool broke"):
        graph.invoke(_call("fail", {"a": 1}))
    guard.flush()
    s = guard.stats("tools")
    assert (s.n, s.successes, s.failures) == (3, 2, 1)


async def test_a_tool_node_async(guard):
    b = StateGraph(M)
    b.add_node("tools", guarded_node(ToolNode([add]), guard=guard))
    b.add_edge(START, "tools")
    b.add_edge("tools", END)
    out = await b.compile().ainvoke(_call("add", {"a": 1, "b": 1}))
    assert out["messages"][-1].content == "2"
    guard.flush()
    assert guard.stats("tools").successes == 1


def test_a_compiled_subgraph_is_guarded_and_serves_node_config_inside():
    adapter = DictConfigAdapter({"sub": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        def inner(state: S) -> S:
            return {"out": node_config()["prompt"] + ":" + interrupt("ok?")}

        sb = StateGraph(S)
        sb.add_node("inner", inner)
        sb.add_edge(START, "inner")
        sb.add_edge("inner", END)
        sub = sb.compile()

        b = StateGraph(S)
        add_guarded_node(b, "sub", sub, guard=g)
        b.add_edge(START, "sub")
        b.add_edge("sub", END)
        graph = b.compile(checkpointer=InMemorySaver())
        cfg = {"configurable": {"thread_id": "t"}}
        graph.invoke({"x": 1}, cfg)  # the subgraph's node interrupts: the guarded node too
        g.propose("sub", {"prompt": "v2"}, mode="switch")
        assert graph.invoke(Command(resume="yes"), cfg)["out"] == "v1:yes"  # pinned across resume
        s = g.stats("sub")
        assert (s.interrupted, s.successes, s.failures) == (1, 1, 0)


def test_something_add_node_cannot_take_is_a_config_error(guard):
    from sil_core import ConfigError

    with pytest.raises(ConfigError, match="node function or a Runnable"):
        guarded_node(42, guard=guard)
