"""A RetryPolicy given only to ``add_node`` (not to the guarded wrapper): LangGraph's own
policy is read at run time, so retried attempts are ``retried`` and the success rate is the
per-task one."""

import random
from typing import TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from sil_core import Guard
from sil_langgraph import guarded_node


class S(TypedDict, total=False):
    x: int
    out: str


@pytest.fixture(params=[0, 60], ids=["general-path", "fast-lane"])
def guard(request):
    g = Guard("memory://", flush_interval=60, refresh_interval=request.param)
    yield g
    g.close()


def _flaky(rate, seed):
    rng = random.Random(seed)

    def flaky(state: S) -> S:
        if rng.random() < rate:
            raise ConnectionError("transient")
        return {"out": "ok"}

    return flaky


@pytest.mark.parametrize("how", ["add_node", "set_node_defaults", "compile"])
def test_transient_failures_with_the_policy_only_on_add_node(guard, how):
    policy = RetryPolicy(max_attempts=5, initial_interval=0.0, jitter=False)
    b = StateGraph(S)
    if how == "set_node_defaults":
        b.set_node_defaults(retry_policy=policy)
    own = {"retry_policy": policy} if how == "add_node" else {}
    b.add_node("flaky", guarded_node(_flaky(0.3, 7), guard=guard), **own)
    b.add_edge(START, "flaky")
    b.add_edge("flaky", END)
    graph = b.compile()
    if how == "compile":
        graph.retry_policy = (policy,)  # a graph-wide policy (Pregel(retry_policy=...))
    tasks = 400
    ok = 0
    for i in range(tasks):
        try:
            graph.invoke({"x": i}, {"configurable": {"thread_id": f"t{i}"}})
            ok += 1
        except ConnectionError:
            pass
    guard.flush()
    s = guard.stats("flaky")
    true_rate = ok / tasks
    assert abs(s.success_rate - true_rate) <= 0.03, (s.success_rate, true_rate)
    assert s.successes == ok and s.failures == tasks - ok
    assert s.retried == s.n - tasks > 50  # every attempt LangGraph ran again
    assert s.attempt_errors == s.retried + s.failures


async def test_async_node_with_the_policy_only_on_add_node(guard):
    rng = random.Random(3)

    async def flaky(state: S) -> S:
        if rng.random() < 0.3:
            raise ConnectionError("transient")
        return {"out": "ok"}

    b = StateGraph(S)
    b.add_node("flaky", guarded_node(flaky, guard=guard),
               retry_policy=RetryPolicy(max_attempts=5, initial_interval=0.0, jitter=False))
    b.add_edge(START, "flaky")
    b.add_edge("flaky", END)
    graph = b.compile()
    ok = 0
    for i in range(100):
        try:
            await graph.ainvoke({"x": i})
            ok += 1
        except ConnectionError:
            pass
    guard.flush()
    s = guard.stats("flaky")
    assert s.successes == ok and s.failures == 100 - ok and s.retried == s.n - 100


def test_the_policy_langgraph_runs_wins_over_the_one_given_to_the_wrapper(guard):
    """add_guarded_node's builder lookup and guarded_node(retry_policy=) are fallbacks: the
    policy read at run time decides (here: the node has none, so each failure is final)."""
    def down(state: S) -> S:
        raise ConnectionError("down")

    b = StateGraph(S)
    b.add_node("down", guarded_node(down, guard=guard, retry_policy=RetryPolicy(max_attempts=3)))
    b.add_edge(START, "down")
    b.add_edge("down", END)
    with pytest.raises(ConnectionError):
        b.compile().invoke({"x": 1})
    guard.flush()
    assert [(r.attempt, r.outcome) for r in guard.store.read_calls("down")] == [(1, "error")]


def test_a_retried_task_keeps_its_arm_without_a_thread_id():
    """During a canary with no thread id, every attempt of a task is served the same arm
    (was: 292 of 1,000 tasks changed arm between attempts, so a candidate failure rescued on
    the baseline counted as a baseline success: candidate 0.904 recorded vs 0.870 true)."""
    import asyncio

    from sil_core import DictConfigAdapter, RolloutPolicy
    from sil_langgraph import node_config

    fail = {"a": 0.3, "b": 0.6}  # per attempt: baseline prompt "a", candidate prompt "b"
    arms_per_task, rng = {}, random.Random(3)
    g = Guard("memory://", adapter=DictConfigAdapter({"work": {"prompt": "a"}}), flush_interval=60,
              refresh_interval=0, policy=RolloutPolicy(ramp=(0.5,), observe_only=True, min_calls=100_000,
                                                       horizon=1_000_000))
    try:
        async def work(state: S) -> S:
            prompt = node_config()["prompt"]
            arms_per_task.setdefault(state["x"], []).append(prompt)
            if rng.random() < fail[prompt]:
                raise ConnectionError("transient")
            return {"out": prompt}

        b = StateGraph(S)
        b.add_node("work", guarded_node(work, guard=g), retry_policy=RetryPolicy(max_attempts=4, initial_interval=0,
                                                                                 jitter=False))
        b.add_edge(START, "work")
        b.add_edge("work", END)
        graph = b.compile()
        g.propose("work", {"prompt": "b"})

        async def main():
            sem = asyncio.Semaphore(20)

            async def one(i):
                async with sem:
                    try:
                        await graph.ainvoke({"x": i})
                    except ConnectionError:
                        pass

            await asyncio.gather(*(one(i) for i in range(400)))

        asyncio.run(main())
        switched = sum(len(set(prompts)) > 1 for prompts in arms_per_task.values())
        assert switched == 0
        assert {p for prompts in arms_per_task.values() for p in prompts} == {"a", "b"}
        g.flush()
        change = g.change("work")
        for version, prompt in ((change.baseline_version, "a"), (change.candidate_version, "b")):
            s = g.stats("work", version=version)
            tasks = [p for p in arms_per_task.values() if p[0] == prompt]
            assert s.successes + s.failures == len(tasks)
    finally:
        g.close()
