"""Guarded nodes in real compiled graphs: injection, control flow, canary routing by thread."""

import asyncio
import random
from typing import TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, interrupt

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State
from sil_langgraph import add_guarded_node, guarded_node, node_config


class S(TypedDict, total=False):
    x: int
    seen: list
    out: str


@pytest.fixture
def guard():
    g = Guard("memory://", flush_interval=60, refresh_interval=0)
    yield g
    g.close()


def one_node_graph(node, **compile_kwargs):
    b = StateGraph(S)
    b.add_node("work", node)
    b.add_edge(START, "work")
    b.add_edge("work", END)
    return b.compile(**compile_kwargs)


def test_injection_of_config_and_store_survives_the_wrapper(guard):
    def work(state: S, config: RunnableConfig, *, store) -> S:
        return {"seen": [config["configurable"]["thread_id"], store is not None]}

    graph = one_node_graph(guarded_node(work, guard=guard), store=InMemoryStore())
    out = graph.invoke({"x": 1}, {"configurable": {"thread_id": "t1"}})
    assert out["seen"] == ["t1", True]
    assert guard.stats("work").successes == 1  # the target is the node's name


def test_one_function_under_two_node_names_is_two_targets(guard):
    def step(state: S) -> S:
        return {"x": state["x"] + 1}

    b = StateGraph(S)
    b.add_node("a", guarded_node(step, guard=guard))
    b.add_node("b", guarded_node(step, guard=guard))
    b.add_edge(START, "a")
    b.add_edge("a", "b")
    b.add_edge("b", END)
    assert b.compile().invoke({"x": 0})["x"] == 2
    assert guard.stats("a").n == 1 and guard.stats("b").n == 1


def test_errors_are_reraised_unchanged_and_recorded(guard):
    err = ValueError("bad state")

    def boom(state: S) -> S:
        raise err

    graph = one_node_graph(guarded_node(boom, guard=guard))
    with pytest.raises(ValueError) as info:
        graph.invoke({"x": 1})
    assert info.value is err
    assert guard.stats("work").failures == 1


def test_an_interrupt_is_control_flow_not_a_failure(guard):
    def ask(state: S) -> S:
        answer = interrupt("approve?")
        return {"out": answer}

    graph = one_node_graph(guarded_node(ask, guard=guard), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"x": 1}, config)
    assert graph.invoke(Command(resume="yes"), config)["out"] == "yes"
    s = guard.stats("work")
    assert (s.interrupted, s.successes, s.failures) == (1, 1, 0)


async def test_async_nodes_and_cancellation(guard):
    async def slow(state: S) -> S:
        await asyncio.sleep(10)
        return {}

    async def fast(state: S) -> S:
        await asyncio.sleep(0)
        return {"x": 1}

    wrapped = guarded_node(slow, guard=guard)
    assert asyncio.iscoroutinefunction(wrapped)
    graph = one_node_graph(guarded_node(fast, guard=guard))
    assert (await graph.ainvoke({"x": 0}))["x"] == 1
    task = asyncio.ensure_future(one_node_graph(wrapped).ainvoke({"x": 0}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    guard.flush()
    s = guard.stats("work")
    assert s.successes == 1 and s.cancelled == 1 and s.failures == 0


def test_success_predicate_on_the_state_update(guard):
    def write(state: S) -> S:
        return {"out": "" if state["x"] % 2 else "text"}

    graph = one_node_graph(guarded_node(write, guard=guard, success=lambda update: update["out"]))
    for x in range(4):
        graph.invoke({"x": x})
    s = guard.stats("work")
    assert (s.successes, s.failures) == (2, 2)


def test_canary_serves_node_config_per_thread_and_rolls_back():
    adapter = DictConfigAdapter({"write": {"prompt": "cite sources"}})
    rng = random.Random(3)
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=20, step_calls=20, ramp=(0.5,)),
               flush_interval=60, refresh_interval=0) as g:
        def write(state: S) -> S:
            prompt = node_config()["prompt"]
            if "cite" not in prompt and rng.random() < 0.7:
                raise RuntimeError("answer without sources")
            return {"out": prompt}

        b = StateGraph(S)
        add_guarded_node(b, "write", write, guard=g)
        b.add_edge(START, "write")
        b.add_edge("write", END)
        graph = b.compile()
        g.propose("write", {"prompt": "be brief"})
        prompts_by_thread = {}
        for i in range(600):
            thread = f"t{i % 40}"
            try:
                out = graph.invoke({"x": i}, {"configurable": {"thread_id": thread}})
                prompts_by_thread.setdefault(thread, set()).add(out["out"])
            except RuntimeError:
                pass
            if i % 20 == 19:
                g.evaluate("write")
                if g.change("write").state != State.CANARY:
                    break
        g.drain()
        assert g.change("write").state == State.ROLLED_BACK
        assert all(len(p) == 1 for p in prompts_by_thread.values())  # one thread, one arm
        assert adapter.configs["write"] == {"prompt": "cite sources"}


def test_node_config_outside_a_versioned_target_is_none(guard):
    seen = []

    def work(state: S) -> S:
        seen.append(node_config())
        return {}

    one_node_graph(guarded_node(work, guard=guard)).invoke({"x": 1})
    assert seen == [None]


def test_signature_and_wrapped_are_the_innermost_function(guard):
    def inner(state: S, config: RunnableConfig) -> S:
        return {}

    wrapped = guarded_node(guarded_node(inner, guard=guard), guard=guard)
    assert wrapped.__wrapped__ is inner
    assert list(__import__("inspect").signature(wrapped).parameters) == ["state", "config"]
