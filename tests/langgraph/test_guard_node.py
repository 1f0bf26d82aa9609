"""GuardNode in real compiled graphs: judging what a target produced, against its version."""

import operator
from typing import Annotated, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from sil_core import ConfigError, DictConfigAdapter, Guard, RolloutPolicy, State, open_store
from sil_langgraph import GuardNode, add_guarded_node, node_config


class S(TypedDict, total=False):
    topic: str
    answer: str
    path: Annotated[list, operator.add]


class Fan(TypedDict, total=False):
    parts: list
    drafts: Annotated[list, operator.add]
    path: Annotated[list, operator.add]


@pytest.fixture
def guard():
    g = Guard("memory://", flush_interval=60, refresh_interval=0)
    yield g
    g.close()


def write_graph(g, write, judge, **compile_kwargs):
    b = StateGraph(S)
    add_guarded_node(b, "write", write, guard=g)
    b.add_node("judge", judge)
    b.add_node("safe", lambda s: {"answer": "safe answer [1]", "path": ["safe"]})
    b.add_edge(START, "write")
    b.add_edge("write", "judge")
    b.add_conditional_edges("judge", judge.route, {"ok": END, "fallback": "safe"})
    b.add_edge("safe", END)
    return b.compile(**compile_kwargs)


def cites(state) -> bool:
    return "[1]" in state.get("answer", "")


def test_garbage_output_is_a_failure_of_the_node_call_counted_once(guard):
    def write(state: S) -> S:
        return {"answer": state["topic"] + (" [1]" if state["topic"] != "bad" else ""), "path": ["write"]}

    judge = GuardNode(guard, "write", cites)
    graph = write_graph(guard, write, judge)
    outs = [graph.invoke({"topic": t}, {"configurable": {"thread_id": f"t{i}"}})
            for i, t in enumerate(["good", "bad", "fine"])]
    assert [o["path"] for o in outs] == [["write"], ["write", "safe"], ["write"]]
    s = guard.stats("write")
    assert (s.n, s.successes, s.failures) == (3, 2, 1)  # the guard node adds no call of its own


async def test_guard_node_under_ainvoke(guard):
    async def write(state: S) -> S:
        return {"answer": "no sources", "path": ["write"]}

    judge = GuardNode(guard, "write", cites)
    out = await write_graph(guard, write, judge).ainvoke({"topic": "x"}, {"configurable": {"thread_id": "a"}})
    assert out["path"] == ["write", "safe"]
    assert guard.stats("write").failures == 1


def test_a_check_that_raises_is_a_failed_check(guard):
    judge = GuardNode(guard, "write", lambda s: s["missing"])
    graph = write_graph(guard, lambda s: {"answer": "[1]", "path": ["write"]}, judge)
    assert graph.invoke({"topic": "x"}, {"configurable": {"thread_id": "t"}})["path"] == ["write", "safe"]
    assert guard.stats("write").failures == 1


def test_a_verdict_with_no_call_to_judge_is_refused_not_guessed(guard):
    """A GuardNode whose target is not a guarded node of its guard cannot attribute its
    verdict: the first run says so loudly, and nothing is recorded as a guess."""
    judge = GuardNode(guard, "external", cites, update=lambda s, ok: {"path": [f"judged:{ok}"]})
    b = StateGraph(S)
    b.add_node("judge", judge)
    b.add_edge(START, "judge")
    b.add_edge("judge", END)
    with pytest.raises(ConfigError, match="guarded_node"):
        b.compile().invoke({"answer": "nope"})
    assert guard.stats("external").n == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_guard_node_after_send_fan_out_with_defer(guard, mode):
    def fan(state: Fan):
        return [Send("draft", {"parts": [p]}) for p in state["parts"]]

    def draft(state: Fan) -> Fan:
        part = state["parts"][0]
        return {"drafts": [part if part != "oops" else ""], "path": ["draft"]}

    judge = GuardNode(guard, "draft", lambda s: all(s["drafts"]),
                      update=lambda s, ok: {"path": ["judge:" + ("ok" if ok else "bad")]})
    b = StateGraph(Fan)
    b.add_node("plan", lambda s: {"path": ["plan"]})
    add_guarded_node(b, "draft", draft, guard=guard)
    b.add_node("judge", judge, defer=True)
    b.add_edge(START, "plan")
    b.add_conditional_edges("plan", fan, ["draft"])
    b.add_edge("draft", "judge")
    b.add_edge("judge", END)
    graph = b.compile()
    for thread, parts in (("good", ["a", "b", "c"]), ("bad", ["a", "oops", "c"])):
        inp, cfg = {"parts": parts}, {"configurable": {"thread_id": thread}}
        out = graph.invoke(inp, cfg) if mode == "sync" else await graph.ainvoke(inp, cfg)
        assert out["path"].count("draft") == 3
        assert out["path"][-1] == ("judge:ok" if thread == "good" else "judge:bad")  # judged once, at the end
    s = guard.stats("draft")
    # the bad thread's three draft calls produced the garbage state together: all three fail
    assert (s.n, s.successes, s.failures) == (6, 3, 3)


def test_canary_through_a_guarded_node_is_detected_and_rolled_back_and_routed_away():
    adapter = DictConfigAdapter({"write": {"prompt": "answer and cite sources"}})
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=20, step_calls=20, ramp=(0.5,)),
               flush_interval=60, refresh_interval=0) as g:
        def write(state: S) -> S:
            prompt = node_config()["prompt"]
            answer = f"{state['topic']}: ..." + (" [1]" if "cite" in prompt else "")
            return {"answer": answer, "path": ["write"]}

        judge = GuardNode(g, "write", cites)
        graph = write_graph(g, write, judge)
        g.propose("write", {"prompt": "answer briefly"})
        candidate = g.change("write").candidate_version
        served_candidate = []
        for i in range(400):
            thread = f"user{i}"
            out = graph.invoke({"topic": f"q{i}"}, {"configurable": {"thread_id": thread}})
            if out["path"] == ["write", "safe"]:
                served_candidate.append(thread)
            if i % 20 == 19:
                g.evaluate("write")
                if g.change("write").state not in (State.CANARY, State.SWITCHED):
                    break
        g.drain()
        change = g.change("write")
        assert change.state == State.ROLLED_BACK
        assert adapter.configs["write"] == {"prompt": "answer and cite sources"}
        assert served_candidate  # the candidate's garbage was caught and routed to the fallback
        assert g.stats("write", version=candidate).failures == len(served_candidate)
        assert g.stats("write", version=candidate).successes == 0
        # after the rollback every thread is served the baseline again: no fallback needed
        out = graph.invoke({"topic": "later"}, {"configurable": {"thread_id": served_candidate[0]}})
        assert out["path"] == ["write"]


def test_route_sends_a_thread_served_a_rolled_back_version_to_the_fallback():
    adapter = DictConfigAdapter({"write": {"prompt": "v1"}})
    with Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0) as g:
        judge = GuardNode(g, "write", lambda s: True)

        def write(state: S) -> S:
            return {"answer": node_config()["prompt"], "path": ["write"]}

        b = StateGraph(S)
        add_guarded_node(b, "write", write, guard=g)
        b.add_edge(START, "write")
        b.add_edge("write", END)
        g.propose("write", {"prompt": "v2"}, mode="switch")
        b.compile().invoke({"topic": "x"}, {"configurable": {"thread_id": "t"}})  # served v2
        g.rollback("write")

        seen = []

        def probe(state: S) -> S:
            seen.append(judge.route(state))
            return {}

        p = StateGraph(S)
        p.add_node("probe", probe)
        p.add_edge(START, "probe")
        p.add_edge("probe", END)
        p.compile().invoke({"answer": "v2"}, {"configurable": {"thread_id": "t"}})
        p.compile().invoke({"answer": "v1"}, {"configurable": {"thread_id": "other"}})
        assert seen == ["fallback", "ok"]


def test_route_in_another_worker_knows_which_threads_a_rolled_back_canary_served():
    """The worker that routes a thread may not be the one that ran its guarded node: the
    arm comes from routing every worker shares, at the change's last weight."""
    store = open_store("memory://")
    adapter = DictConfigAdapter({"write": {"prompt": "v1"}})
    policy = RolloutPolicy(ramp=(0.5,), observe_only=True)
    with Guard(store, adapter=adapter, policy=policy, flush_interval=60, refresh_interval=0) as runner, \
            Guard(store, adapter=adapter, flush_interval=60, refresh_interval=0) as router:
        served = {}

        def write(state: S) -> S:
            served[state["topic"]] = node_config()["prompt"]
            return {"answer": "x", "path": ["write"]}

        b = StateGraph(S)
        add_guarded_node(b, "write", write, guard=runner)
        b.add_edge(START, "write")
        b.add_edge("write", END)
        graph = b.compile()
        runner.propose("write", {"prompt": "v2"})  # a canary at 50 %
        for i in range(20):
            graph.invoke({"topic": f"t{i}"}, {"configurable": {"thread_id": f"t{i}"}})
        assert set(served.values()) == {"v1", "v2"}
        runner.rollback("write")

        judge = GuardNode(router, "write", lambda s: True)  # another worker: an empty ledger
        routes = {}

        def probe(state: S) -> S:
            routes[state["topic"]] = judge.route(state)
            return {}

        p = StateGraph(S)
        p.add_node("probe", probe)
        p.add_edge(START, "probe")
        p.add_edge("probe", END)
        probe_graph = p.compile()
        for thread in served:
            probe_graph.invoke({"topic": thread}, {"configurable": {"thread_id": thread}})
        assert routes == {t: ("fallback" if prompt == "v2" else "ok") for t, prompt in served.items()}


def test_a_candidate_that_only_fails_the_check_trips_the_wire_within_5_candidate_runs():
    """The candidate's writer never raises; its answers fail the GuardNode check. The
    verdict reaches the tripwire as feedback on the writer's own record, so the change is
    rolled back after 5 candidate runs, not after the statistics' 30."""
    from sil_core.changes import bucket

    adapter = DictConfigAdapter({"write": {"prompt": "cite"}})
    with Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=30, ramp=(0.5,)),
               flush_interval=60, refresh_interval=0) as g:
        def write(state: S) -> S:
            cite = node_config()["prompt"] == "cite"
            return {"answer": "answer" + (" [1]" if cite else ""), "path": ["write"]}

        graph = write_graph(g, write, GuardNode(g, "write", cites))
        change = g.propose("write", {"prompt": "terse"})
        candidate_runs = 0
        for i in range(200):
            thread = f"t{i}"
            graph.invoke({"topic": "x"}, {"configurable": {"thread_id": thread}})
            candidate_runs += bucket(change.id, thread) < 0.5
            g.drain()
            if g.change("write").state not in (State.CANARY, State.SWITCHED):
                break
        done = g.change("write")
        assert done.state == State.ROLLED_BACK and done.verdict.metric == "tripwire"
        assert candidate_runs == 5 and done.verdict.evidence["tripwire"]["judged_failed"] == 5
        assert g.stats("write", version=change.candidate_version).failures == 5
