"""GuardCallbackHandler: observe-only records of LangGraph node executions, on real compiled
graphs whose nodes include a compiled subgraph and a plain Runnable, sync and async."""

import asyncio
import operator
import threading
from typing import Annotated, TypedDict

import pytest
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, Send, interrupt

from sil_core import Guard
from sil_langgraph.callbacks import GuardCallbackHandler


class S(TypedDict, total=False):
    x: int
    answer: str
    log: Annotated[list, operator.add]


def make_sub():
    sub = StateGraph(S)
    sub.add_node("inner", lambda s: {"x": s["x"] + 1})
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)
    return sub.compile()


def ask(state: S):
    return {"answer": interrupt({"question": "ok?", "x": state["x"]})}


def make_graph(*, fail=False):
    def plain_fn(s):
        if fail:
            raise ValueError("the chain broke")
        return {"x": s["x"] * 2}

    b = StateGraph(S)
    b.add_node("sub", make_sub())  # a compiled subgraph: a Runnable, not a function
    b.add_node("plain", RunnableLambda(plain_fn, name="doubler"))  # a plain Runnable
    b.add_node("ask", ask)
    b.add_edge(START, "sub")
    b.add_edge("sub", "plain")
    b.add_edge("plain", "ask")
    b.add_edge("ask", END)
    return b.compile(checkpointer=InMemorySaver())


@pytest.fixture
def guard():
    g = Guard("memory://", flush_interval=60)
    yield g
    g.close()


def records(guard, target=None):
    guard.flush()
    return guard.store.read_calls(target)


def by_target(guard):
    out = {}
    for r in records(guard):
        out.setdefault(r.target, []).append(r.outcome)
    return out


def run_sync(graph, handler, thread="t1"):
    cfg = {"configurable": {"thread_id": thread}, "callbacks": [handler]}
    first = graph.invoke({"x": 1}, cfg)
    assert "__interrupt__" in first
    return graph.invoke(Command(resume="yes"), cfg)


async def run_async(graph, handler, thread="t1"):
    cfg = {"configurable": {"thread_id": thread}, "callbacks": [handler]}
    first = await graph.ainvoke({"x": 1}, cfg)
    assert "__interrupt__" in first
    return await graph.ainvoke(Command(resume="yes"), cfg)


EXPECTED = {"sub": ["ok"], "inner": ["ok"], "plain": ["ok"], "ask": ["interrupted", "ok"]}


def test_one_record_per_node_execution_sync(guard):
    handler = GuardCallbackHandler(guard)
    out = run_sync(make_graph(), handler)
    assert (out["x"], out["answer"]) == (4, "yes")
    assert by_target(guard) == EXPECTED
    assert handler.open_runs == 0
    for r in records(guard):
        assert r.duration_s >= 0
        assert r.context_value()["node"] == r.target
    interrupted = [r for r in records(guard, "ask") if r.outcome == "interrupted"]
    assert interrupted[0].error_type == "GraphInterrupt"
    stats = guard.stats("ask")
    assert (stats.successes, stats.failures, stats.interrupted) == (1, 0, 1)


async def test_one_record_per_node_execution_async(guard):
    handler = GuardCallbackHandler(guard)
    out = await run_async(make_graph(), handler)
    assert out["answer"] == "yes" and out["x"] == 4
    assert by_target(guard) == EXPECTED
    assert handler.open_runs == 0


def test_with_config_attaches_the_handler_once(guard):
    graph = make_graph().with_config(callbacks=[GuardCallbackHandler(guard)])
    cfg = {"configurable": {"thread_id": "w"}}
    graph.invoke({"x": 1}, cfg)
    graph.invoke(Command(resume="no"), cfg)
    assert by_target(guard) == EXPECTED


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_runnable_node_is_an_error_and_the_exception_propagates(guard, mode):
    handler = GuardCallbackHandler(guard)
    graph = make_graph(fail=True)
    cfg = {"configurable": {"thread_id": "f"}, "callbacks": [handler]}
    with pytest.raises(ValueError, match="the chain broke"):
        if mode == "sync":
            graph.invoke({"x": 1}, cfg)
        else:
            asyncio.run(graph.ainvoke({"x": 1}, cfg))
    [r] = records(guard, "plain")
    assert (r.outcome, r.error_type, r.error_message) == ("error", "ValueError", "the chain broke")
    assert guard.stats("plain").failures == 1
    assert handler.open_runs == 0


def test_only_the_selected_nodes_are_recorded(guard):
    run_sync(make_graph(), GuardCallbackHandler(guard, nodes={"sub", "plain"}))
    assert by_target(guard) == {"sub": ["ok"], "plain": ["ok"]}


def test_subgraph_nodes_can_be_left_out_and_targets_prefixed(guard):
    run_sync(make_graph(), GuardCallbackHandler(guard, subgraph_nodes=False, prefix="g/"))
    assert by_target(guard) == {"g/sub": ["ok"], "g/plain": ["ok"], "g/ask": ["interrupted", "ok"]}


def test_a_target_function_names_or_skips(guard):
    name = lambda node, meta: None if node == "inner" else f"{node}@{meta['langgraph_step']}"  # noqa: E731
    run_sync(make_graph(), GuardCallbackHandler(guard, target=name))
    assert set(by_target(guard)) == {"sub@1", "plain@2", "ask@3"}


def test_parent_command_from_a_subgraph_is_control_flow_not_an_error(guard):
    def jump(state: S):
        return Command(graph=Command.PARENT, goto="after", update={"x": 100})

    inner = StateGraph(S)
    inner.add_node("jump", jump)
    inner.add_edge(START, "jump")
    b = StateGraph(S)
    b.add_node("host", inner.compile())
    b.add_node("after", lambda s: {"x": s["x"] + 1})
    b.add_edge(START, "host")
    b.add_edge("after", END)
    out = b.compile().invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard)]})
    assert out["x"] == 101
    outcomes = by_target(guard)
    assert outcomes["host"] == ["interrupted"] and outcomes["after"] == ["ok"]
    [host] = records(guard, "host")
    assert host.error_type == "ParentCommand"
    assert guard.stats("host").failures == 0


def test_retried_attempts_are_separate_records(guard):
    attempts = []

    def flaky(state: S):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky upstream")
        return {"x": 7}

    b = StateGraph(S)
    b.add_node("flaky", flaky, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.001, jitter=False))
    b.add_edge(START, "flaky")
    b.compile().invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard)]})
    assert by_target(guard) == {"flaky": ["error", "error", "ok"]}


def test_send_fan_out_on_threads_records_every_task(guard):
    def fan(state: S):
        return [Send("work", {"x": i}) for i in range(8)]

    seen = set()

    def work(state: S):
        seen.add(threading.get_ident())
        return {"log": [state["x"]]}

    b = StateGraph(S)
    b.add_node("work", work)
    b.add_conditional_edges(START, fan, ["work"])
    handler = GuardCallbackHandler(guard)
    out = b.compile().invoke({"x": 0, "log": []}, {"callbacks": [handler]})
    assert sorted(out["log"]) == list(range(8))
    assert by_target(guard) == {"work": ["ok"] * 8}
    assert handler.open_runs == 0


async def test_sibling_cancellation_is_cancelled_not_error(guard):
    async def fast_fail(state: S):
        raise RuntimeError("boom")

    async def long_ok(state: S):
        await asyncio.sleep(5)
        return {"x": 1}

    b = StateGraph(S)
    b.add_node("fast_fail", fast_fail)
    b.add_node("long_ok", long_ok)
    b.add_edge(START, "fast_fail")
    b.add_edge(START, "long_ok")
    with pytest.raises(RuntimeError):
        await b.compile().ainvoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard)]})
    outcomes = by_target(guard)
    assert outcomes["fast_fail"] == ["error"]
    assert outcomes["long_ok"] == ["cancelled"]
    assert guard.stats("long_ok").failures == 0


async def test_a_node_timeout_is_an_error_of_that_node(guard):
    async def slow(state: S):
        await asyncio.sleep(5)
        return {"x": 1}

    b = StateGraph(S)
    b.add_node("slow", slow, timeout=0.05)
    b.add_edge(START, "slow")
    handler = GuardCallbackHandler(guard)
    with pytest.raises(Exception) as info:
        await b.compile().ainvoke({"x": 0}, {"callbacks": [handler]})
    assert type(info.value).__name__ == "NodeTimeoutError"
    [r] = records(guard, "slow")
    assert (r.outcome, r.error_type) == ("error", "NodeTimeoutError")
    assert handler.open_runs == 0


def test_a_cache_hit_runs_no_node_and_records_nothing(guard):
    from langgraph.cache.memory import InMemoryCache
    from langgraph.types import CachePolicy

    calls = []

    def cached(state: S):
        calls.append(state["x"])
        return {"x": state["x"] + 1}

    b = StateGraph(S)
    b.add_node("cached", cached, cache_policy=CachePolicy())
    b.add_edge(START, "cached")
    graph = b.compile(cache=InMemoryCache())
    for x in (1, 1, 2):
        graph.invoke({"x": x}, {"callbacks": [GuardCallbackHandler(guard)]})
    assert calls == [1, 2]
    assert by_target(guard) == {"cached": ["ok", "ok"]}


def test_the_handler_never_raises_into_the_graph(guard):
    class Broken:
        durability = "batched"

        def record(self, *a, **k):
            raise OSError("the store is down")

    out = make_graph().invoke({"x": 1}, {"configurable": {"thread_id": "b"},
                                         "callbacks": [GuardCallbackHandler(Broken())]})
    assert out["x"] == 4


def test_version_and_arm_tags_in_run_metadata_reach_the_record(guard):
    cfg = {"configurable": {"thread_id": "m"}, "callbacks": [GuardCallbackHandler(guard)],
           "metadata": {"sil_version:plain": "v123", "sil_arm:plain": "candidate"}}
    make_graph().invoke({"x": 1}, cfg)
    [r] = records(guard, "plain")
    assert (r.version, r.arm) == ("v123", "candidate")
    [s] = records(guard, "sub")
    assert (s.version, s.arm) == (None, None)


def test_is_a_langchain_callback_handler(guard):
    from langchain_core.callbacks import BaseCallbackHandler

    handler = GuardCallbackHandler(guard)
    assert isinstance(handler, BaseCallbackHandler)
    assert handler.raise_error is False
    assert GuardCallbackHandler.__name__ == "GuardCallbackHandler"


def test_missing_langchain_core_raises_missing_extra(monkeypatch):
    import sys

    from sil_core import MissingExtra
    from sil_langgraph import callbacks

    monkeypatch.setattr(callbacks, "_HANDLER", callbacks._compat.LazyClass(
        callbacks.__name__, "GuardCallbackHandler", object, None, "langchain_core.callbacks:BaseCallbackHandler",
        "langchain-core"))
    monkeypatch.setitem(sys.modules, "langchain_core.callbacks", None)
    with pytest.raises(MissingExtra, match=r"sil-guard\[langgraph\]"):
        callbacks.GuardCallbackHandler  # noqa: B018


def test_importing_the_modules_does_not_import_langgraph():
    """adapters and callbacks import langgraph / langchain-core only when used (whatever
    the package's ``__init__`` imports itself)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, sil_langgraph;"
            "lg = lambda: {m for m in sys.modules if m.split('.')[0] in {'langgraph', 'langchain_core'}};"
            "before = lg(); import sil_langgraph.adapters, sil_langgraph.callbacks;"
            "print(sorted(lg() - before))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_a_tool_node_is_recorded(guard):
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langgraph.graph import MessagesState
    from langgraph.prebuilt import ToolNode

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def model(state: MessagesState):
        return {"messages": [AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}])]}

    b = StateGraph(MessagesState)
    b.add_node("model", model)
    b.add_node("tools", ToolNode([add]))
    b.add_edge(START, "model")
    b.add_edge("model", "tools")
    out = b.compile().invoke({"messages": []}, {"callbacks": [GuardCallbackHandler(guard, nodes={"tools"})]})
    assert out["messages"][-1].content == "5"
    assert by_target(guard) == {"tools": ["ok"]}


def test_one_handler_shared_by_concurrent_runs(guard):
    from concurrent.futures import ThreadPoolExecutor

    handler = GuardCallbackHandler(guard)
    graph = make_graph().with_config(callbacks=[handler])

    def run(i):
        cfg = {"configurable": {"thread_id": f"c{i}"}}
        graph.invoke({"x": i}, cfg)
        graph.invoke(Command(resume="yes"), cfg)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run, range(64)))
    outcomes = by_target(guard)
    assert {k: len(v) for k, v in outcomes.items()} == {"sub": 64, "inner": 64, "plain": 64, "ask": 128}
    assert outcomes["ask"].count("interrupted") == 64
    assert handler.open_runs == 0


@pytest.mark.parametrize("prefix", ["", "observed/"])
def test_a_node_also_wrapped_by_guarded_node_is_recorded_once(guard, prefix):
    from sil_langgraph import guarded_node

    def fail_on_two(state: S) -> S:
        if state["x"] == 2:
            raise ValueError("two")
        return {"answer": "ok"}

    b = StateGraph(S)
    b.add_node("wrapped", guarded_node(fail_on_two, guard=guard))
    b.add_node("plain", lambda s: {"log": ["plain"]})
    b.add_edge(START, "wrapped")
    b.add_edge("wrapped", "plain")
    b.add_edge("plain", END)
    graph = b.compile().with_config(callbacks=[GuardCallbackHandler(guard, prefix=prefix)])
    for x in (1, 2, 3):
        try:
            graph.invoke({"x": x})
        except ValueError:
            pass
    got = by_target(guard)
    assert sorted(got["wrapped"]) == ["error", "ok", "ok"]  # the wrapper's records, once each
    if prefix:  # another target: the handler's own records, by design
        assert sorted(got["observed/wrapped"]) == ["error", "ok", "ok"]
    assert got[prefix + "plain"] == ["ok", "ok"]


# -- sil-guard's own nodes and the include/exclude filters -------------------------------------
def judged_graph(guard, check):
    """write (guarded) -> judge (a GuardNode) -> END or the fallback node safe_write."""
    from sil_langgraph import GuardNode, add_guarded_node

    judge = GuardNode(guard, "write", check)
    b = StateGraph(S)
    add_guarded_node(b, "write", lambda s: {"answer": "draft"}, guard=guard)
    b.add_node("judge", judge)
    b.add_node("safe_write", lambda s: {"answer": "safe"})
    b.add_node("polish", RunnableLambda(lambda s: {"x": 1}, name="polisher"))
    b.add_edge(START, "write")
    b.add_edge("write", "judge")
    b.add_conditional_edges("judge", judge.route, {"ok": "polish", "fallback": "safe_write"})
    b.add_edge("safe_write", "polish")
    b.add_edge("polish", END)
    return b.compile()


@pytest.mark.parametrize("verdict", [True, False])
def test_guard_nodes_and_fallbacks_are_left_out_by_default(guard, verdict):
    graph = judged_graph(guard, lambda s: verdict)
    handler = GuardCallbackHandler(guard)
    out = graph.invoke({"x": 0}, {"callbacks": [handler]})
    assert out["answer"] == ("draft" if verdict else "safe")
    targets = by_target(guard)
    assert "judge" not in targets and "safe_write" not in targets
    assert targets["polish"] == ["ok"]  # a user's node after the fallback is still recorded
    assert handler.open_runs == 0


def test_async_graph_leaves_out_guard_nodes_too(guard):
    graph = judged_graph(guard, lambda s: False)
    asyncio.run(graph.ainvoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard)]}))
    targets = by_target(guard)
    assert set(targets) == {"write", "polish"}


def test_own_nodes_true_records_them(guard):
    graph = judged_graph(guard, lambda s: False)
    graph.invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard, own_nodes=True)]})
    assert {"judge", "safe_write", "polish"} <= set(by_target(guard))


def test_include_and_exclude_by_name_or_predicate(guard):
    graph = judged_graph(guard, lambda s: False)
    graph.invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard, exclude=("polish",))]})
    assert "polish" not in by_target(guard)

    g2 = Guard("memory://", flush_interval=60)
    try:
        graph = judged_graph(g2, lambda s: False)
        # a node named in include is recorded even when it is a fallback
        graph.invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(g2, include=["safe_write"])]})
        assert set(by_target(g2)) == {"write", "safe_write"}  # write: by its guarded wrapper
    finally:
        g2.close()

    g3 = Guard("memory://", flush_interval=60)
    try:
        graph = make_graph()
        handler = GuardCallbackHandler(g3, include=lambda name: name != "sub", exclude=lambda name: name == "ask")
        run_sync(graph, handler)
        assert set(by_target(g3)) == {"plain", "inner"}
    finally:
        g3.close()


def test_a_user_route_that_answers_something_else_is_not_a_guard_node(guard):
    def route(state):
        return "go"

    b = StateGraph(S)
    b.add_node("decide", lambda s: {"x": 1})
    b.add_node("next", lambda s: {"x": 2})
    b.add_edge(START, "decide")
    b.add_conditional_edges("decide", route, {"go": "next"})
    b.add_edge("next", END)
    b.compile().invoke({"x": 0}, {"callbacks": [GuardCallbackHandler(guard)]})
    assert by_target(guard) == {"decide": ["ok"], "next": ["ok"]}


def test_note_own_node_marks_a_node_name(guard):
    from sil_langgraph.callbacks import _own_nodes, note_own_node

    note_own_node("inner")
    try:
        run_sync(make_graph(), GuardCallbackHandler(guard))
        assert "inner" not in by_target(guard)
    finally:
        _own_nodes.discard("inner")
