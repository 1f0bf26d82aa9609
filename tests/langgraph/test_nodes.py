"""Guarded nodes in real compiled graphs: injection, control flow, retries, cache hits, canary
routing by thread and config-version pinning across interrupt and resume."""

import asyncio
import operator
import random
import time
from typing import Annotated, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.cache.memory import InMemoryCache
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.memory import InMemoryStore
from langgraph.types import CachePolicy, Command, RetryPolicy, Send, interrupt

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State, open_store
from sil_core.testing import ManualClock
from sil_langgraph import add_guarded_node, guarded_node, node_config


class S(TypedDict, total=False):
    x: int
    seen: list
    out: str


@pytest.fixture(params=[0, 60], ids=["general-path", "fast-lane"])
def guard(request):
    """Every test runs twice: with views that expire at once (each execution takes the
    general path) and with views that stay fresh (repeat executions take the fast lane)."""
    g = Guard("memory://", flush_interval=60, refresh_interval=request.param)
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
                if g.change("write").state not in (State.CANARY, State.SWITCHED):
                    break
        g.drain()
        assert g.change("write").state == State.ROLLED_BACK
        assert all(len(p) == 1 for p in prompts_by_thread.values())  # one thread, one arm
        assert adapter.configs["write"] == {"prompt": "cite sources"}


def test_node_config_without_version_or_adapter_raises_a_config_error(guard):
    """Inside a guarded node node_config() never returns None silently; outside one it does."""
    from sil_core import ConfigError

    def work(state: S) -> S:
        node_config()
        return {}

    graph = one_node_graph(guarded_node(work, guard=guard))
    for _ in range(2):  # the general path, then (fresh views) the fast lane
        with pytest.raises(ConfigError, match="no version serves it and its guard has no adapter"):
            graph.invoke({"x": 1})
    assert node_config() is None


def test_node_config_before_any_change_is_the_adapters_config():
    adapter = DictConfigAdapter({"work": {"prompt": "v1"}})
    seen = []

    def work(state: S) -> S:
        seen.append(node_config())
        return {}

    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        graph = one_node_graph(guarded_node(work, guard=g))
        graph.invoke({"x": 1})
        adapter.configs["work"] = {"prompt": "edited by hand"}  # read per execution, not cached
        graph.invoke({"x": 2})
        g.flush()
        assert [r.version for r in g.store.read_calls("work")] == [None, None]  # nothing invented
    assert seen == [{"prompt": "v1"}, {"prompt": "edited by hand"}]


def test_signature_and_wrapped_are_the_innermost_function(guard):
    def inner(state: S, config: RunnableConfig) -> S:
        return {}

    wrapped = guarded_node(guarded_node(inner, guard=guard), guard=guard)
    assert wrapped.__wrapped__ is inner
    assert list(__import__("inspect").signature(wrapped).parameters) == ["state", "config"]


# -- injection, control flow, retries, cache, pinning ---------------------------------------


class Fan(TypedDict, total=False):
    items: list
    done: Annotated[list, operator.add]


def calls(guard, target):
    guard.flush()
    return guard.store.read_calls(target)


def test_injection_of_config_runtime_store_and_writer_sync(guard):
    def work(state: S, config: RunnableConfig, runtime, store, writer) -> S:
        writer({"custom": 1})
        return {"seen": [config["metadata"]["langgraph_node"], runtime is not None, store is not None]}

    graph = one_node_graph(guarded_node(work, guard=guard), store=InMemoryStore())
    chunks = list(graph.stream({"x": 1}, {"configurable": {"thread_id": "t"}}, stream_mode=["custom", "values"]))
    assert ("custom", {"custom": 1}) in chunks
    assert chunks[-1][1]["seen"] == ["work", True, True]
    assert guard.stats("work").successes == 1


async def test_injection_of_config_runtime_store_and_writer_async(guard):
    async def work(state: S, config: RunnableConfig, runtime, store, writer) -> S:
        writer("w")
        return {"seen": [config["configurable"]["thread_id"], runtime.store is store, store is not None]}

    graph = one_node_graph(guarded_node(work, guard=guard), store=InMemoryStore())
    out = await graph.ainvoke({"x": 1}, {"configurable": {"thread_id": "a"}})
    assert out["seen"] == ["a", True, True]
    assert guard.stats("work").successes == 1


async def test_async_interrupt_and_resume_is_not_a_failure(guard):
    async def ask(state: S) -> S:
        return {"out": interrupt("approve?")}

    graph = one_node_graph(guarded_node(ask, guard=guard), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    await graph.ainvoke({"x": 1}, config)
    assert (await graph.ainvoke(Command(resume="ok"), config))["out"] == "ok"
    s = guard.stats("work")
    assert (s.interrupted, s.successes, s.failures) == (1, 1, 0)


def test_command_parent_from_a_subgraph_is_control_flow(guard):
    def inner_jump(state: S):
        return Command(graph=Command.PARENT, goto="after", update={"out": "jumped"})

    sb = StateGraph(S)
    add_guarded_node(sb, "inner_jump", inner_jump, guard=guard)
    sb.add_edge(START, "inner_jump")
    sub = sb.compile()

    def host(state: S):
        return sub.invoke(state)

    def after(state: S) -> S:
        return {"x": 99}

    b = StateGraph(S)
    add_guarded_node(b, "host", host, guard=guard)
    add_guarded_node(b, "after", after, guard=guard)
    b.add_edge(START, "host")
    b.add_edge("after", END)
    out = b.compile().invoke({"x": 0})
    assert out == {"x": 99, "out": "jumped"}
    assert guard.stats("inner_jump").successes == 1
    h = guard.stats("host")
    assert (h.interrupted, h.failures, h.successes) == (1, 0, 0)
    assert guard.stats("after").successes == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_send_fan_out_on_threads(guard, mode):
    def fan(state: Fan):
        return [Send("work", {"items": [i]}) for i in state["items"]]

    def work(state: Fan) -> Fan:
        return {"done": state["items"]}

    async def awork(state: Fan) -> Fan:
        return {"done": state["items"]}

    b = StateGraph(Fan)
    b.add_node("start", lambda s: {})
    add_guarded_node(b, "work", work if mode == "sync" else awork, guard=guard)
    b.add_edge(START, "start")
    b.add_conditional_edges("start", fan, ["work"])
    b.add_edge("work", END)
    graph = b.compile()
    inp = {"items": list(range(8))}
    out = graph.invoke(inp) if mode == "sync" else await graph.ainvoke(inp)
    assert sorted(out["done"]) == list(range(8))
    assert guard.stats("work").successes == 8


def test_retries_record_attempts_and_success_rate_counts_the_final_outcome(guard):
    attempts = {"n": 0}

    def flaky(state: S) -> S:
        attempts["n"] += 1
        if attempts["n"] % 3:
            raise ConnectionError("flaky upstream")
        return {"out": "ok"}

    b = StateGraph(S)
    add_guarded_node(b, "flaky", flaky, guard=guard,
                     retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False))
    b.add_edge(START, "flaky")
    b.add_edge("flaky", END)
    graph = b.compile()
    assert graph.invoke({"x": 1})["out"] == "ok"
    records = calls(guard, "flaky")
    assert [(r.attempt, r.outcome) for r in records] == [(1, "retried"), (2, "retried"), (3, "ok")]
    s = guard.stats("flaky")
    assert (s.n, s.successes, s.failures, s.attempt_errors, s.success_rate) == (3, 1, 0, 2, 1.0)


def test_exhausted_retries_count_one_failure_and_every_attempt_error(guard):
    def down(state: S) -> S:
        raise ConnectionError("down")

    b = StateGraph(S)
    b.set_node_defaults(retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.0, jitter=False))
    add_guarded_node(b, "down", down, guard=guard)
    b.add_edge(START, "down")
    b.add_edge("down", END)
    with pytest.raises(ConnectionError):
        b.compile().invoke({"x": 1})
    assert [(r.attempt, r.outcome) for r in calls(guard, "down")] == [(1, "retried"), (2, "error")]
    s = guard.stats("down")
    assert (s.failures, s.attempt_errors, s.success_rate) == (1, 2, 0.0)


def test_an_exception_the_policy_does_not_retry_is_final(guard):
    def bad(state: S) -> S:
        raise ValueError("not retryable by default")

    b = StateGraph(S)
    add_guarded_node(b, "bad", bad, guard=guard, retry_policy=RetryPolicy(max_attempts=5, initial_interval=0.0))
    b.add_edge(START, "bad")
    b.add_edge("bad", END)
    with pytest.raises(ValueError):
        b.compile().invoke({"x": 1})
    assert [(r.attempt, r.outcome) for r in calls(guard, "bad")] == [(1, "error")]


async def test_node_timeout_is_recorded_as_cancelled(guard):
    async def slow(state: S) -> S:
        await asyncio.sleep(5)
        return {}

    b = StateGraph(S)
    add_guarded_node(b, "slow", slow, guard=guard, timeout=0.05)
    b.add_edge(START, "slow")
    b.add_edge("slow", END)
    with pytest.raises(Exception) as info:
        await b.compile().ainvoke({"x": 1})
    assert type(info.value).__name__ == "NodeTimeoutError"
    s = guard.stats("slow")
    assert (s.cancelled, s.failures) == (1, 0)


async def test_sibling_cancellation_is_cancelled_not_a_failure(guard):
    async def fast_fail(state: S) -> S:
        await asyncio.sleep(0.01)
        raise RuntimeError("sibling broke")

    async def long_ok(state: S) -> S:
        await asyncio.sleep(5)
        return {}

    b = StateGraph(S)
    add_guarded_node(b, "fast_fail", fast_fail, guard=guard)
    add_guarded_node(b, "long_ok", long_ok, guard=guard)
    b.add_edge(START, "fast_fail")
    b.add_edge(START, "long_ok")
    with pytest.raises(RuntimeError):
        await b.compile().ainvoke({"x": 1})
    guard.flush()
    assert guard.stats("fast_fail").failures == 1
    s = guard.stats("long_ok")
    assert (s.cancelled, s.failures) == (1, 0)


def test_a_cache_hit_records_no_call(guard):
    def cached(state: S) -> S:
        return {"out": str(state["x"])}

    b = StateGraph(S)
    add_guarded_node(b, "cached", cached, guard=guard, cache_policy=CachePolicy())
    b.add_edge(START, "cached")
    b.add_edge("cached", END)
    graph = b.compile(cache=InMemoryCache())
    for x in (1, 1, 2):
        graph.invoke({"x": x})
    assert guard.stats("cached").n == 2


def _pinning_graph(g, seen):
    def draft(state: S) -> S:
        prompt = node_config()["prompt"]
        seen.append(prompt)
        approved = interrupt(f"approve draft made with {prompt}?")
        return {"out": f"{prompt}:{approved}"}

    b = StateGraph(S)
    add_guarded_node(b, "draft", draft, guard=g)
    b.add_edge(START, "draft")
    b.add_edge("draft", END)
    return b.compile(checkpointer=InMemorySaver())


def test_a_thread_keeps_its_version_across_interrupt_and_rollback():
    adapter = DictConfigAdapter({"draft": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        seen = []
        graph = _pinning_graph(g, seen)
        g.propose("draft", {"prompt": "v2"}, mode="switch")
        cfg = {"configurable": {"thread_id": "approve-me"}}
        graph.invoke({"x": 1}, cfg)  # interrupted while serving v2
        assert g.rollback("draft")
        assert adapter.configs["draft"] == {"prompt": "v1"}
        out = graph.invoke(Command(resume="yes"), cfg)
        assert out["out"] == "v2:yes"  # approved v2, got v2 (not v1)
        assert seen == ["v2", "v2"]
        # the pin is spent: a new run of the same thread is routed again
        graph.invoke({"x": 2}, cfg)
        assert seen[-1] == "v1"
        s = g.stats("draft")
        assert (s.interrupted, s.successes, s.failures) == (2, 1, 0)


def test_a_canary_thread_keeps_the_baseline_across_a_promotion():
    adapter = DictConfigAdapter({"draft": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=20, step_calls=20, ramp=(0.5,)),
               flush_interval=60, refresh_interval=0) as g:
        seen = []
        graph = _pinning_graph(g, seen)
        g.propose("draft", {"prompt": "v2"})
        baseline_thread = None
        for i in range(40):  # find a thread the canary routes to the baseline
            cfg = {"configurable": {"thread_id": f"t{i}"}}
            graph.invoke({"x": i}, cfg)
            if seen[-1] == "v1":
                baseline_thread = cfg
                break
        assert baseline_thread is not None
        assert g.promote("draft")
        graph.invoke(Command(resume="ok"), baseline_thread)
        assert seen[-1] == "v1"  # started with v1, finished with v1
        fresh = {"configurable": {"thread_id": "after-promotion"}}
        graph.invoke({"x": 0}, fresh)
        assert seen[-1] == "v2"


def test_missing_langgraph_raises_missing_extra(monkeypatch):
    import sys

    from sil_core import MissingExtra
    from sil_langgraph import _compat

    monkeypatch.setattr(_compat, "_lg", None)
    monkeypatch.setitem(sys.modules, "langgraph.config", None)
    with pytest.raises(MissingExtra, match=r"sil-guard\[langgraph\]"):
        _compat.load()


def test_every_graph_bubble_up_is_interrupted_control_flow(guard):
    from langgraph.errors import GraphBubbleUp, GraphInterrupt, ParentCommand

    from sil_core.outcomes import classify_exception

    guarded_node(lambda s: s, guard=guard)  # registers LangGraph's control flow
    for exc in (GraphBubbleUp(), GraphInterrupt(), ParentCommand(Command(goto="x"))):
        assert classify_exception(exc) == "interrupted"
    drained = getattr(__import__("langgraph.errors").errors, "GraphDrained", None)
    if drained is not None:
        assert issubclass(drained, GraphBubbleUp)


def test_without_node_attempt_every_failure_is_final():
    from langgraph.types import RetryPolicy as RP

    from sil_langgraph._compat import will_retry

    policy = RP(max_attempts=3)
    assert will_retry(policy, ConnectionError(), 1) and not will_retry(policy, ConnectionError(), 3)
    assert not will_retry(policy, ConnectionError(), None)  # langgraph < 1.1.3: unknown attempt
    assert not will_retry([RP(retry_on=KeyError)], ConnectionError(), 1)


def test_the_fast_lane_records_every_execution_and_sees_another_workers_change():
    """Repeat executions of an unversioned target skip the shells; each is still recorded
    once (ok and error alike), and a change proposed by another worker on the same store
    reaches the node once its view expires."""
    store = open_store("memory://")
    adapter = DictConfigAdapter({"work": {"prompt": "v1"}})
    clock = ManualClock()
    with Guard(store, adapter=adapter, flush_interval=60, refresh_interval=0.2, clock=clock) as worker, \
            Guard(store, adapter=adapter, flush_interval=60) as other:
        prompts = []

        def work(state: S) -> S:
            prompts.append((node_config() or {}).get("prompt"))
            if state["x"] % 4 == 0:
                raise ValueError("bad input")
            return {"out": "done"}

        graph = one_node_graph(guarded_node(work, guard=worker))
        for x in range(40):
            try:
                graph.invoke({"x": x}, {"configurable": {"thread_id": f"t{x}"}})
            except ValueError:
                pass
        worker.flush()
        s = worker.stats("work")
        assert (s.successes, s.failures) == (30, 10)
        records = worker.store.read_calls("work", limit=100)
        assert len({r.id for r in records}) == 40 and {r.attempt for r in records} == {1}
        assert {r.version for r in records} == {None}

        other.propose("work", {"prompt": "v2"}, mode="switch")
        graph.invoke({"x": 1}, {"configurable": {"thread_id": "fresh"}})  # the cached view: no version yet
        worker.flush()
        assert worker.store.read_calls("work", limit=1)[0].version is None
        clock.advance(0.5)  # the worker's view of "work" expired long ago: the next call reads it first
        graph.invoke({"x": 1}, {"configurable": {"thread_id": "after"}})
        worker.flush()
        latest = worker.store.read_calls("work", limit=1)[0]
        assert latest.version == other.change("work").candidate_version and latest.arm == "candidate"
        assert prompts[-1] == "v2"


def test_each_task_of_a_fan_out_keeps_its_own_pin_across_resume():
    """Two tasks of one node in one thread, both interrupted on v2, resumed one at a time
    after a rollback: the second keeps v2 although the first finished (the pin is per task)."""

    class Fan(TypedDict, total=False):
        drafts: Annotated[list, operator.add]

    adapter = DictConfigAdapter({"draft": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        def draft(state: dict) -> dict:
            prompt = node_config()["prompt"]
            answer = interrupt(f"approve {state['part']}?")
            return {"drafts": [f"{state['part']}:{prompt}:{answer}"]}

        b = StateGraph(Fan)
        add_guarded_node(b, "draft", draft, guard=g)
        b.add_conditional_edges(START, lambda s: [Send("draft", {"part": p}) for p in ("a", "b")], ["draft"])
        b.add_edge("draft", END)
        graph = b.compile(checkpointer=InMemorySaver())
        g.propose("draft", {"prompt": "v2"}, mode="switch")
        cfg = {"configurable": {"thread_id": "fan"}}
        graph.invoke({"drafts": []}, cfg)
        pending = graph.get_state(cfg).interrupts
        assert len(pending) == 2
        assert g.rollback("draft")
        first, second = sorted(pending, key=lambda i: i.value)
        graph.invoke(Command(resume={first.id: "yes"}), cfg)
        out = graph.invoke(Command(resume={second.id: "ok"}), cfg)
        assert sorted(out["drafts"]) == ["a:v2:yes", "b:v2:ok"]


def test_interrupt_inside_a_subgraph_keeps_subgraph_state_and_resumes(guard):
    def ask(state: S) -> S:
        return {"out": interrupt("approve?")}

    sb = StateGraph(S)
    add_guarded_node(sb, "ask", ask, guard=guard)
    sb.add_edge(START, "ask")
    sb.add_edge("ask", END)
    sub = sb.compile()

    def host(state: S) -> S:  # a guarded node that runs the subgraph
        return sub.invoke(state)

    b = StateGraph(S)
    add_guarded_node(b, "host", host, guard=guard)
    b.add_edge(START, "host")
    b.add_edge("host", END)
    graph = b.compile(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "sub"}}
    graph.invoke({"x": 1}, cfg)
    state = graph.get_state(cfg, subgraphs=True)
    sub_states = [t.state for t in state.tasks if t.state is not None]
    assert len(sub_states) == 1 and sub_states[0].next == ("ask",)  # the subgraph waits in "ask"
    assert graph.invoke(Command(resume="yes"), cfg)["out"] == "yes"
    for target in ("ask", "host"):
        s = guard.stats(target)
        assert (s.interrupted, s.successes, s.failures) == (1, 1, 0), target


@pytest.mark.parametrize("use_add", [True, False], ids=["add_guarded_node", "guarded_node"])
def test_a_routing_key_keeps_one_user_on_one_arm_across_threads(use_add):
    """key=fn(config): the user id routes, so a user's threads all see the same arm."""
    adapter = DictConfigAdapter({"write": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=200, step_calls=200, ramp=(0.5,)),
               flush_interval=60, refresh_interval=0) as g:
        def write(state: S) -> S:
            return {"out": node_config()["prompt"]}

        def user(config):
            return config["configurable"]["user_id"]

        b = StateGraph(S)
        if use_add:
            add_guarded_node(b, "write", write, guard=g, key=user)
        else:
            b.add_node("write", guarded_node(write, guard=g, key=user))
        b.add_edge(START, "write")
        b.add_edge("write", END)
        graph = b.compile()
        g.propose("write", {"prompt": "v2"})
        arms = {}
        rng = random.Random(5)  # unrelated thread ids (crc32 buckets of "u1-t0"/"u1-t1" correlate)
        for u in range(40):
            for t in range(2):
                cfg = {"configurable": {"thread_id": f"{rng.getrandbits(64):x}", "user_id": f"user-{u}"}}
                arms.setdefault(u, set()).add(graph.invoke({"x": t}, cfg)["out"])
        assert all(len(a) == 1 for a in arms.values()), arms  # one user, one arm
        assert {a for s in arms.values() for a in s} == {"v1", "v2"}  # both arms served
        g.flush()
        records = g.store.read_calls("write", limit=200)
        assert {r.arm for r in records} == {"baseline", "candidate"}


def test_the_served_version_arm_and_change_are_in_the_task_metadata():
    """Runs started inside the node (an LLM call, any Runnable) see sil_version, sil_arm and
    sil_change_id in their metadata; checkpoint metadata is the run's and is left alone."""
    from langchain_core.runnables import RunnableLambda
    from langgraph.config import get_config

    adapter = DictConfigAdapter({"work": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        seen = []
        child = RunnableLambda(lambda x: seen.append(dict(get_config()["metadata"])) or x)

        def write(state: S, config: RunnableConfig) -> S:
            child.invoke(state)
            return {"out": node_config()["prompt"]}

        graph = one_node_graph(guarded_node(write, guard=g), checkpointer=InMemorySaver())
        graph.invoke({"x": 0}, {"configurable": {"thread_id": "before"}})
        assert "sil_version" not in seen[-1]  # no version serves the target yet
        g.propose("work", {"prompt": "v2"}, mode="switch")
        cfg = {"configurable": {"thread_id": "after"}}
        graph.invoke({"x": 1}, cfg)
        change = g.change("work")
        assert seen[-1]["sil_version"] == change.candidate_version
        assert seen[-1]["sil_arm"] == "candidate" and seen[-1]["sil_change_id"] == change.id
        assert seen[-1]["langgraph_node"] == "work"
        assert "sil_version" not in graph.get_state(cfg).metadata
