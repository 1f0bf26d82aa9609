"""The store contract: every backend must pass every test here."""

from __future__ import annotations

import math
import time

import pytest

from sil_core.aggregates import BUCKET_S
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.store import open_store

NOW = (time.time() // 3600 - 1) * 3600 + 1800.0  # the middle of the last hour (within every retention)


def rec(i: int, target: str = "agent", *, ok: bool = True, ts: float = NOW, duration: float = 0.1,
        version: str | None = "v1", arm: str | None = None, outcome: str | None = None, score=None,
        context: str | None = None) -> CallRecord:
    return CallRecord(
        id=f"id-{target}-{i}", target=target, ts=ts, duration_s=duration,
        outcome=outcome or (Outcome.OK if ok else Outcome.ERROR),
        error_type=None if ok else "ValueError", error_message=None if ok else "boom",
        version=version, arm=arm, score=score, context=context,
    )


def test_round_trip_keeps_every_field(store):
    r = CallRecord(
        id="abc", target="t", ts=NOW + 0.123456, duration_s=0.25, outcome=Outcome.ERROR,
        error_type="KeyError", error_message="'x' ünïcode", version="v9", arm="candidate",
        attempt=2, score=0.5, context='{"user":"u1","n":[1,2]}',
    )
    store.write([r])
    got = store.get_call("abc")
    assert got is not None
    assert got.target == "t" and got.outcome == "error" and got.error_type == "KeyError"
    assert got.error_message == "'x' ünïcode"
    assert got.version == "v9" and got.arm == "candidate" and got.attempt == 2 and got.score == 0.5
    assert abs(got.ts - (NOW + 0.123456)) < 1e-5 and got.duration_s == pytest.approx(0.25)
    assert got.context_value() == {"user": "u1", "n": [1, 2]}
    assert got.feedback_success is None and got.success is False
    assert store.get_call("missing") is None


def test_stats_from_aggregates(store):
    calls = [rec(i, ok=i % 10 != 0, duration=0.1 * (1 + i % 5)) for i in range(100)]
    calls += [rec(100, outcome=Outcome.CANCELLED), rec(101, outcome=Outcome.INTERRUPTED)]
    store.write(calls[:50])
    store.write(calls[50:])
    s = store.stats("agent")
    assert s.n == 102 and s.successes == 90 and s.failures == 10
    assert s.cancelled == 1 and s.interrupted == 1
    assert s.success_rate == pytest.approx(0.9)
    lo, hi = s.success_ci
    assert lo < 0.9 < hi and hi - lo < 0.15
    # latencies of successes: 0.1..0.5 equally often -> median 0.3, p95 0.5 (histogram: +-5 %)
    assert s.p50_s == pytest.approx(0.3, rel=0.06)
    assert s.p95_s == pytest.approx(0.5, rel=0.06)
    assert store.stats("other").n == 0 and store.stats("other").success_rate is None


def test_cells_by_version_and_arm(store):
    store.write([rec(i, version="v1", arm="baseline") for i in range(5)]
                + [rec(10 + i, version="v2", arm="candidate", ok=i < 2) for i in range(4)])
    cells = store.cells("agent")
    assert set(cells) == {("v1", "baseline"), ("v2", "candidate")}
    assert cells[("v2", "candidate")].successes == 2 and cells[("v2", "candidate")].failures == 2
    assert set(store.cells("agent", version="v1")) == {("v1", "baseline")}
    assert store.stats("agent", version="v2").n == 4


def test_windowed_cells(store):
    old = NOW - 5 * BUCKET_S
    store.write([rec(i, ts=old, ok=False) for i in range(3)] + [rec(10 + i) for i in range(4)])
    assert store.stats("agent").n == 7
    recent = store.stats("agent", since=NOW - 60)
    assert recent.n == 4 and recent.failures == 0
    hour = int(old // BUCKET_S)
    assert sum(c.n for c in store.cells("agent", since_hour=hour).values()) == 7
    assert sum(c.n for c in store.cells("agent", since_hour=hour + 1).values()) == 4


def test_feedback_overrides_success_everywhere(store):
    store.write([rec(1), rec(2), rec(3, ok=False)])
    store.write([], [Feedback("id-agent-1", success=False, score=0.0)])
    s = store.stats("agent")
    assert s.successes == 1 and s.failures == 2 and s.score_n == 1 and s.score_mean == 0.0
    assert store.stats("agent", since=NOW - 1).failures == 2
    # the same feedback again changes nothing; the opposite flips it back
    store.write([], [Feedback("id-agent-1", success=False)])
    assert store.stats("agent").failures == 2
    store.write([], [Feedback("id-agent-3", success=True)])
    s = store.stats("agent")
    assert s.successes == 2 and s.failures == 1
    assert store.get_call("id-agent-1").success is False
    assert store.get_call("id-agent-1").feedback_score == 0.0
    store.write([], [Feedback("nope", success=False)])  # unknown id: ignored


def test_feedback_in_the_same_batch_as_its_call(store):
    store.write([rec(1)], [Feedback("id-agent-1", success=False)])
    assert store.stats("agent").failures == 1


def test_read_calls_filters_and_limits(store):
    store.write([rec(i, ts=NOW + i, version="v1" if i < 6 else "v2") for i in range(10)]
                + [rec(i, target="b", ts=NOW + i) for i in range(3)])
    rows = store.read_calls("agent")
    assert [r.id for r in rows] == [f"id-agent-{i}" for i in range(10)]
    assert [r.id for r in store.read_calls("agent", limit=3)] == ["id-agent-7", "id-agent-8", "id-agent-9"]
    assert [r.ts for r in store.read_calls("agent", since=NOW + 2, until=NOW + 4)] == [NOW + 2, NOW + 3]
    assert len(store.read_calls("agent", version="v2")) == 4
    assert len(store.read_calls(None)) == 13
    assert store.targets() == ["agent", "b"]
    assert store.count_calls() == 13 and store.count_calls("b") == 3


def test_reopen_keeps_everything(url, store):
    if url.startswith("memory"):
        pytest.skip("memory:// does not outlive its process")
    store.write([rec(1), rec(2, ok=False)], [Feedback("id-agent-1", score=1.0)])
    store.close()
    again = open_store(url)
    try:
        s = again.stats("agent")
        assert (s.n, s.successes, s.failures, s.score_n) == (2, 1, 1, 1)
        assert again.get_call("id-agent-2").error_message == "boom"
    finally:
        again.close()


def test_two_handles_share_one_store(url, store):
    if url.startswith("memory"):
        pytest.skip("memory:// is one process's")
    other = open_store(url)
    try:
        store.write([rec(1)])
        other.write([rec(2, ok=False)])
        for s in (store, other):
            st = s.stats("agent")
            assert (st.n, st.failures) == (2, 1)
    finally:
        other.close()


def test_retention(store):
    if "retention" not in store.capabilities:
        pytest.skip("backend has no retention")
    now = time.time()
    store.write([rec(i, ts=now - 10 * 86400) for i in range(5)] + [rec(10 + i, ts=now - i) for i in range(5)])
    removed = store.retain(max_age_s=86400)
    assert removed == 5 and store.count_calls("agent") == 5
    assert store.retain(max_calls=2) == 3
    assert [r.id for r in store.read_calls("agent")] == ["id-agent-11", "id-agent-10"]
    # retention removes raw records, not the evidence already aggregated
    assert store.stats("agent").n == 10


def test_many_targets_read_cost_is_per_target(store):
    store.write([rec(i, target=f"t{i % 50}") for i in range(500)])
    assert len(store.targets()) == 50
    assert store.stats("t7").n == 10


def test_nan_and_huge_durations_do_not_break_cells(store):
    store.write([rec(1, duration=0.0), rec(2, duration=1e6)])
    s = store.stats("agent")
    assert s.n == 2 and math.isfinite(s.p95_s)
