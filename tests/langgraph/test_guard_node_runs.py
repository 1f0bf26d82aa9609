"""A GuardNode's verdict reaches the exact execution that produced the state it judges: under
concurrency without a thread id, and after an ``interrupt()`` resumed in another process.
One execution, one record; recorded per-arm success equal to what the fake model produced."""

import asyncio
import random
import subprocess
import sys
import textwrap
from collections import Counter
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from sil_core import DictConfigAdapter, Guard, RolloutPolicy
from sil_langgraph import GuardNode, add_guarded_node, node_config

TRUTH = {"good": 0.96, "bad": 0.30}  # how often each prompt's answer passes the check
POLICY = RolloutPolicy(ramp=(0.5,), observe_only=True, min_calls=10_000, horizon=100_000)  # stays at 50 %


class S(TypedDict, total=False):
    q: int
    answer: str


def make_writer(produced: Counter, rng: random.Random, *, sleep: bool = False):
    async def write(state: S) -> S:
        prompt = node_config()["prompt"]
        await asyncio.sleep(rng.random() * 0.005 if sleep else 0)  # interleave the concurrent runs
        ok = rng.random() < TRUTH[prompt]
        produced[(prompt, ok)] += 1
        return {"answer": "fine [1]" if ok else "garbage"}

    return write


def per_arm(g: Guard, change) -> dict:
    return {arm: (s.n, s.successes) for arm, s in (
        ("baseline", g.stats("write", version=change.baseline_version)),
        ("candidate", g.stats("write", version=change.candidate_version)))}


def test_concurrent_runs_without_a_thread_id_are_judged_one_record_each():
    """400 ainvoke runs, 20 at a time, no thread id, a 50 % canary (was: 736 records for
    400 runs, baseline 78 % vs candidate 77 % where the truth was 96 % vs 30 %)."""
    adapter = DictConfigAdapter({"write": {"prompt": "good"}})
    with Guard("memory://", adapter=adapter, policy=POLICY, flush_interval=60, refresh_interval=0) as g:
        produced, rng = Counter(), random.Random(11)
        b = StateGraph(S)
        add_guarded_node(b, "write", make_writer(produced, rng, sleep=True), guard=g)
        b.add_node("judge", GuardNode(g, "write", lambda s: "[1]" in s["answer"]))
        b.add_edge(START, "write")
        b.add_edge("write", "judge")
        b.add_edge("judge", END)
        graph = b.compile()
        change = g.propose("write", {"prompt": "bad"})

        async def main():
            sem = asyncio.Semaphore(20)

            async def one(i):
                async with sem:
                    await graph.ainvoke({"q": i})

            await asyncio.gather(*(one(i) for i in range(400)))

        asyncio.run(main())
        g.flush()
        assert g.store.count_calls("write") == 400  # one record per run
        got = per_arm(g, change)
        truth = {"baseline": (produced[("good", True)] + produced[("good", False)], produced[("good", True)]),
                 "candidate": (produced[("bad", True)] + produced[("bad", False)], produced[("bad", True)])}
        assert got == truth  # exact: every verdict reached its own execution
        assert 150 < got["candidate"][0] < 250


_RESUME = textwrap.dedent(
    """
    import sys
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.types import Command
    from sil_core import DictConfigAdapter, Guard
    sys.path.insert(0, sys.argv[3])
    from test_guard_node_runs import build, POLICY

    with SqliteSaver.from_conn_string(sys.argv[2]) as saver:
        with Guard(sys.argv[1], adapter=DictConfigAdapter({"write": {"prompt": "good"}}), policy=POLICY,
                   worker_id="worker-b", refresh_interval=0) as g:
            graph = build(g, None, None).compile(checkpointer=saver)
            for i in range(int(sys.argv[4])):
                graph.invoke(Command(resume="approved"), {"configurable": {"thread_id": f"t{i}"}})
    """
)


def build(g: Guard, produced, rng) -> StateGraph:
    from langgraph.types import interrupt

    def write(state: S) -> S:
        prompt = node_config()["prompt"]
        ok = rng.random() < TRUTH[prompt]
        produced[(prompt, ok)] += 1
        return {"answer": "fine [1]" if ok else "garbage"}

    def review(state: S) -> S:
        interrupt({"answer": state["answer"]})  # a person reviews the answer; resumed later, elsewhere
        return {}

    b = StateGraph(S)
    add_guarded_node(b, "write", write, guard=g)
    b.add_node("review", review)
    b.add_node("judge", GuardNode(g, "write", lambda s: "[1]" in s["answer"]))
    b.add_edge(START, "write")
    b.add_edge("write", "review")
    b.add_edge("review", "judge")
    b.add_edge("judge", END)
    return b


def test_a_verdict_after_a_resume_in_another_process_overrides_the_original_record(tmp_path):
    """The writer runs in this process, a human-review interrupt follows, and the run is
    resumed (and judged) in another process (was: 400 records for 200 runs, candidate 63 %
    vs a true 26 %)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    url, checkpoints, runs = f"sqlite:///{tmp_path / 'sil.db'}", str(tmp_path / "checkpoints.db"), 200
    produced, rng = Counter(), random.Random(5)
    with SqliteSaver.from_conn_string(checkpoints) as saver:
        with Guard(url, adapter=DictConfigAdapter({"write": {"prompt": "good"}}), policy=POLICY,
                   worker_id="worker-a", refresh_interval=0) as g:
            change = g.propose("write", {"prompt": "bad"})
            graph = build(g, produced, rng).compile(checkpointer=saver)
            for i in range(runs):
                graph.invoke({"q": i}, {"configurable": {"thread_id": f"t{i}"}})  # stops at the review
    here = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", _RESUME, url, checkpoints, here, str(runs)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    with Guard(url, worker_id="reader") as g:
        assert g.store.count_calls("write") == runs  # one execution, one record
        got = per_arm(g, change)
    truth = {"baseline": (produced[("good", True)] + produced[("good", False)], produced[("good", True)]),
             "candidate": (produced[("bad", True)] + produced[("bad", False)], produced[("bad", True)])}
    assert got == truth
