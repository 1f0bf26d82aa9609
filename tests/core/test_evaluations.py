"""Evaluators run off the caller's thread and feed their result back as feedback."""

import asyncio
import threading

import pytest

from sil_core import Guard, last_call


@pytest.fixture
def guard():
    g = Guard("memory://", flush_interval=0.02, evaluator_timeout_s=5.0)
    yield g
    g.close()


def test_the_evaluator_runs_after_the_call_returned_on_another_thread(guard):
    release = threading.Event()
    seen = {}

    def judge(result):
        seen["thread"] = threading.current_thread()
        assert release.wait(5), "the call never returned while its evaluator ran"
        return 0.25 if result == "meh" else 1.0

    @guard.track("agent", evaluate=judge)
    def agent(q):
        return "meh"

    assert agent("q") == "meh"  # returns while the evaluator waits for it
    release.set()
    assert guard.drain()
    assert seen["thread"] is not threading.main_thread()
    stats = guard.stats("agent")
    assert stats.score_mean == 0.25 and stats.metrics["score"].n == 1


def test_a_dict_gives_success_score_and_metrics(guard):
    @guard.track("agent", evaluate=lambda r: {"success": False, "score": 0.4, "faithfulness": 0.7, "bad": "x"})
    def agent():
        return "answer"

    for _ in range(3):
        agent()
    guard.drain()
    stats = guard.stats("agent")
    assert stats.failures == 3 and stats.successes == 0  # the evaluator's verdict overrides the return
    assert stats.metrics["score"].mean == pytest.approx(0.4)
    assert stats.metrics["faithfulness"].n == 3 and "bad" not in stats.metrics


def test_a_failing_or_slow_evaluator_is_skipped_and_the_call_is_kept():
    from sil_core._internal.failopen import error_counts

    g = Guard("memory://", flush_interval=0.02, evaluator_timeout_s=0.2)
    stop = threading.Event()
    try:
        @g.track("broken", evaluate=lambda r: 1 / 0)
        def broken():
            return 1

        @g.track("slow", evaluate=lambda r: stop.wait(10) and 0.0)
        def slow():
            return 2

        before = error_counts["evaluator"]
        assert broken() == 1 and slow() == 2
        assert g.drain(10)
        assert error_counts["evaluator"] == before + 1
        assert g._evaluations.timed_out == 1
        for target in ("broken", "slow"):
            stats = g.stats(target)
            assert stats.n == 1 and stats.successes == 1 and "score" not in stats.metrics
    finally:
        stop.set()
        g.close()


def test_an_async_evaluator_and_an_async_function(guard):
    async def judge(result):
        await asyncio.sleep(0.01)
        return {"tokens_out": len(result)}

    @guard.track("agent", evaluate=judge)
    async def agent():
        return "x" * 12

    async def main():
        await agent()
        return last_call().call_id

    call_id = asyncio.run(main())
    guard.drain()
    assert guard.stats("agent").metrics["tokens_out"].mean == 12
    (record,) = guard.store.read_calls("agent", limit=5)
    assert record.id == call_id and record.feedback_metrics["tokens_out"][0] == 12


def test_evaluate_later_for_an_integration_and_close_keeps_its_feedback(tmp_path):
    url = f"sqlite:///{tmp_path / 'sil.db'}"
    g = Guard(url, flush_interval=0.02)
    with g.call("agent") as call:
        pass
    g.evaluate_later(call.call_id, lambda r: 0.9, "result")
    g.close()
    again = Guard(url)
    try:
        assert again.stats("agent").score_mean == pytest.approx(0.9)
    finally:
        again.close()
