"""The store contract suite: the tests every :class:`~sil_core.store.Store` must pass.

sil-guard runs it against its own four backends (memory, JSONL, SQLite, PostgreSQL); a
store of your own runs it the same way. Subclass :class:`StoreContract` in a test module
and say how to open an empty store; pytest collects every ``test_*`` method::

    # tests/test_my_store.py
    from sil_core.testing import StoreContract
    from my_package import MyStore

    class TestMyStore(StoreContract):
        def make_store(self, tmp_path):
            return MyStore(tmp_path / "data")

``make_store(tmp_path)`` is called once per test with that test's own empty ``tmp_path``
(pytest's fixture), and again with the same ``tmp_path`` where a test reopens the store or
opens a second handle: it must then return a handle to the *same* store. A store that does
not outlive its handle sets ``persistent = False``; one whose handles do not share data
(each is its own store, like ``memory://``) sets ``shared = False``; the tests that need
those abilities are skipped. A store needing a server can create its database, schema or
prefix in ``make_store`` (or in an autouse fixture of the subclass) and skip when the
server is unreachable. Optional abilities follow ``Store.capabilities``: the retention test
runs only when it includes ``"retention"``.

Run it with ``pytest``. This module imports only the standard library (and sil-guard);
pytest itself is imported only when a test is skipped.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..aggregates import BUCKET_S
from ..records import CallRecord, Feedback, Outcome
from ..store.base import Store

__all__ = ("NOW", "StoreContract", "rec")

#: the middle of the last full hour (within every retention); the records' default time
NOW = (time.time() // 3600 - 1) * 3600 + 1800.0


def rec(i: int, target: str = "agent", *, ok: bool = True, ts: float = NOW, duration: float = 0.1,
        version: str | None = "v1", arm: str | None = None, outcome: str | None = None, score=None,
        context: str | None = None, metrics: dict[str, float] | None = None) -> CallRecord:
    """A call record with id ``id-<target>-<i>`` (a success unless ``ok=False``)."""
    return CallRecord(
        id=f"id-{target}-{i}", target=target, ts=ts, duration_s=duration,
        outcome=outcome or (Outcome.OK if ok else Outcome.ERROR),
        error_type=None if ok else "ValueError", error_message=None if ok else "boom",
        version=version, arm=arm, score=score, context=context, metrics=metrics,
    )


def _skip(reason: str) -> None:
    """Skip the running test (pytest's skip; unittest's where pytest is not installed)."""
    try:
        import pytest
    except ImportError:  # pragma: no cover - the suite is meant for pytest
        import unittest

        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


def _approx(a: Any, b: float, rel: float = 1e-6) -> bool:
    """``a`` equals ``b`` within a relative tolerance (``pytest.approx``'s default)."""
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


class StoreContract:
    """Base class of the contract tests: subclass it and define :meth:`make_store`."""

    #: the store outlives its handle: closing it and calling ``make_store`` again finds the data
    persistent: bool = True
    #: two handles opened with the same ``tmp_path`` see one another's writes
    shared: bool = True

    def make_store(self, tmp_path: Any) -> Store:
        """An open handle to the store kept at ``tmp_path`` (empty on the first call of a test)."""
        raise NotImplementedError(f"{type(self).__name__} must define make_store(self, tmp_path)")

    @contextmanager
    def open_store(self, tmp_path: Any) -> Iterator[Store]:
        """``make_store(tmp_path)``, closed at the end of the block."""
        store = self.make_store(tmp_path)
        try:
            yield store
        finally:
            store.close()

    # -- the contract -------------------------------------------------------------------------
    def test_round_trip_keeps_every_field(self, tmp_path):
        with self.open_store(tmp_path) as store:
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
            assert abs(got.ts - (NOW + 0.123456)) < 1e-5 and _approx(got.duration_s, 0.25)
            assert got.context_value() == {"user": "u1", "n": [1, 2]}
            assert got.feedback_success is None and got.success is False
            assert store.get_call("missing") is None

    def test_stats_from_aggregates(self, tmp_path):
        with self.open_store(tmp_path) as store:
            calls = [rec(i, ok=i % 10 != 0, duration=0.1 * (1 + i % 5)) for i in range(100)]
            calls += [rec(100, outcome=Outcome.CANCELLED), rec(101, outcome=Outcome.INTERRUPTED)]
            store.write(calls[:50])
            store.write(calls[50:])
            s = store.stats("agent")
            assert s.n == 102 and s.successes == 90 and s.failures == 10
            assert s.cancelled == 1 and s.interrupted == 1
            assert _approx(s.success_rate, 0.9)
            lo, hi = s.success_ci
            assert lo < 0.9 < hi and hi - lo < 0.15
            # latencies of successes: 0.1..0.5 equally often -> median 0.3, p95 0.5 (histogram: +-5 %)
            assert _approx(s.p50_s, 0.3, rel=0.06), s.p50_s
            assert _approx(s.p95_s, 0.5, rel=0.06), s.p95_s
            assert store.stats("other").n == 0 and store.stats("other").success_rate is None

    def test_cells_by_version_and_arm(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(i, version="v1", arm="baseline") for i in range(5)]
                        + [rec(10 + i, version="v2", arm="candidate", ok=i < 2) for i in range(4)])
            cells = store.cells("agent")
            assert set(cells) == {("v1", "baseline"), ("v2", "candidate")}
            assert cells[("v2", "candidate")].successes == 2 and cells[("v2", "candidate")].failures == 2
            assert set(store.cells("agent", version="v1")) == {("v1", "baseline")}
            assert store.stats("agent", version="v2").n == 4

    def test_windowed_cells(self, tmp_path):
        with self.open_store(tmp_path) as store:
            old = NOW - 5 * BUCKET_S
            store.write([rec(i, ts=old, ok=False) for i in range(3)] + [rec(10 + i) for i in range(4)])
            assert store.stats("agent").n == 7
            recent = store.stats("agent", since=NOW - 60)
            assert recent.n == 4 and recent.failures == 0
            hour = int(old // BUCKET_S)
            assert sum(c.n for c in store.cells("agent", since_hour=hour).values()) == 7
            assert sum(c.n for c in store.cells("agent", since_hour=hour + 1).values()) == 4

    def test_feedback_overrides_success_everywhere(self, tmp_path):
        with self.open_store(tmp_path) as store:
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

    def test_feedback_in_the_same_batch_as_its_call(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(1)], [Feedback("id-agent-1", success=False)])
            assert store.stats("agent").failures == 1

    def test_read_calls_filters_and_limits(self, tmp_path):
        with self.open_store(tmp_path) as store:
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

    def test_reopen_keeps_everything(self, tmp_path):
        if not self.persistent:
            _skip(f"{type(self).__name__}: the store does not outlive its handle (persistent = False)")
        with self.open_store(tmp_path) as store:
            store.write([rec(1), rec(2, ok=False)], [Feedback("id-agent-1", score=1.0)])
        with self.open_store(tmp_path) as again:
            s = again.stats("agent")
            assert (s.n, s.successes, s.failures, s.score_n) == (2, 1, 1, 1)
            assert again.get_call("id-agent-2").error_message == "boom"

    def test_two_handles_share_one_store(self, tmp_path):
        if not self.shared:
            _skip(f"{type(self).__name__}: each handle is its own store (shared = False)")
        with self.open_store(tmp_path) as store, self.open_store(tmp_path) as other:
            store.write([rec(1)])
            other.write([rec(2, ok=False)])
            for s in (store, other):
                st = s.stats("agent")
                assert (st.n, st.failures) == (2, 1)

    def test_retention(self, tmp_path):
        with self.open_store(tmp_path) as store:
            if "retention" not in store.capabilities:
                _skip(f"{type(self).__name__}: no retention (\"retention\" is not in capabilities)")
            now = time.time()
            store.write([rec(i, ts=now - 10 * 86400) for i in range(5)] + [rec(10 + i, ts=now - i) for i in range(5)])
            removed = store.retain(max_age_s=86400)
            assert removed == 5 and store.count_calls("agent") == 5
            assert store.retain(max_calls=2) == 3
            assert [r.id for r in store.read_calls("agent")] == ["id-agent-11", "id-agent-10"]
            # retention removes raw records, not the evidence already aggregated
            assert store.stats("agent").n == 10

    def test_many_targets_read_cost_is_per_target(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(i, target=f"t{i % 50}") for i in range(500)])
            assert len(store.targets()) == 50
            assert store.stats("t7").n == 10

    def test_feedback_before_its_call_waits_for_it(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([], [Feedback("id-agent-1", success=False, score=0.25)])
            assert store.get_call("id-agent-1") is None and store.stats("agent").n == 0
            store.write([rec(1)])
            got = store.get_call("id-agent-1")
            assert got.feedback_success is False and got.feedback_score == 0.25
            s = store.stats("agent")
            assert (s.n, s.successes, s.failures, s.score_n) == (1, 0, 1, 1)

    def test_state_rows_compare_and_set(self, tmp_path):
        with self.open_store(tmp_path) as store:
            assert store.kv_get("change", "c1") is None
            assert store.kv_put("change", "c1", {"state": "proposed"}, expect_rev=0) == 1
            assert store.kv_put("change", "c1", {"state": "other"}, expect_rev=0) is None  # second create loses
            assert store.kv_put("change", "c1", {"state": "done"}, expect_rev=1) == 2
            assert store.kv_put("change", "c1", {"state": "stale"}, expect_rev=1) is None
            assert store.kv_put("change", "missing", {}, expect_rev=1) is None  # rev > 0 never creates
            assert store.kv_put("change", "c0", {"n": [1, None, "ü"]}, expect_rev=None) == 1
            assert store.kv_put("version", "c1", {"other": True}, expect_rev=None) == 1
            assert store.kv_get("change", "c1") == ({"state": "done"}, 2)
            assert store.kv_get("change", "missing") is None
            assert store.kv_list("change") == [("c0", {"n": [1, None, "ü"]}, 1), ("c1", {"state": "done"}, 2)]
            assert store.kv_list("version") == [("c1", {"other": True}, 1)] and store.kv_list("head") == []

    def test_trail_appends_in_order_and_moves_the_head(self, tmp_path):
        with self.open_store(tmp_path) as store:
            seen: list = []

            def build(n: int):
                def make(last):
                    seen.append(last)
                    seq = last["seq"] + 1 if last else 1
                    return {"seq": seq, "target": f"t{n % 2}", "n": n, "hash": f"h{seq}"}
                return make

            assert store.trail_read() == [] and store.kv_get("trail", "head") is None
            events = [store.trail_append(build(n)) for n in range(5)]
            assert seen[0] is None and seen[1:] == events[:-1]  # each build got the event stored before it
            assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
            assert store.trail_read() == events
            assert [e["seq"] for e in store.trail_read(target="t0")] == [1, 3, 5]
            assert [e["seq"] for e in store.trail_read(after_seq=2, limit=2)] == [3, 4]
            assert store.kv_get("trail", "head") == ({"seq": 5, "hash": "h5"}, 5)

    def test_nan_and_huge_durations_do_not_break_cells(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(1, duration=0.0), rec(2, duration=1e6)])
            s = store.stats("agent")
            assert s.n == 2 and math.isfinite(s.p95_s)

    # -- metrics -------------------------------------------------------------------------------
    def test_metrics_aggregate_per_version_and_arm(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(i, version="v1", arm="baseline", score=0.5, metrics={"tokens_out": 10.0 * (i + 1)})
                         for i in range(4)])
            store.write([rec(10 + i, version="v2", arm="candidate", metrics={"tokens_out": 5.0, "cost_usd": 0.01})
                         for i in range(3)] + [rec(20, version="v2", arm="candidate")])
            cells = store.cells("agent")
            base, cand = cells[("v1", "baseline")].metrics, cells[("v2", "candidate")].metrics
            assert set(base) == {"tokens_out", "score"} and set(cand) == {"tokens_out", "cost_usd"}
            assert base["tokens_out"][:3] == [4, 100.0, 3000.0] and base["tokens_out"][3] == 4
            m = store.stats("agent", version="v1").metrics
            assert m["tokens_out"].n == 4 and _approx(m["tokens_out"].mean, 25.0)
            assert m["score"].n == 4 and _approx(m["score"].mean, 0.5)
            m = store.stats("agent", version="v2").metrics
            assert (m["tokens_out"].n, m["cost_usd"].n) == (3, 3) and _approx(m["cost_usd"].mean, 0.01)
            assert store.stats("agent", since=NOW - 60).metrics["tokens_out"].n == 7
            whole = store.stats("agent").metrics["tokens_out"]
            assert whole.n == 7 and _approx(whole.mean, 115.0 / 7)
            assert store.stats("agent").metrics.keys() == {"tokens_out", "cost_usd", "score"}

    def test_a_late_metric_replaces_the_calls_own_value(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(1, metrics={"cost_usd": 1.0, "tokens_in": 7.0}), rec(2, metrics={"cost_usd": 2.0})])
            changed = store.write([], [Feedback("id-agent-1", metrics={"cost_usd": 4.0}, ts=NOW + 10)])
            if changed is not None:
                assert [r.id for r in changed] == ["id-agent-1"]
                assert changed[0].effective_metrics == {"cost_usd": 4.0, "tokens_in": 7.0}
            m = store.stats("agent").metrics
            assert m["cost_usd"].n == 2 and _approx(m["cost_usd"].mean, 3.0) and m["tokens_in"].n == 1
            assert store.stats("agent", since=NOW - 60).metrics["cost_usd"].mean == m["cost_usd"].mean
            # per name, the value given last wins, whatever order it arrives in
            store.write([], [Feedback("id-agent-1", metrics={"cost_usd": 9.0, "tokens_in": 3.0}, ts=NOW + 5)])
            store.write([], [Feedback("id-agent-1", metrics={"cost_usd": 6.0}, ts=NOW + 20)])
            got = store.get_call("id-agent-1")
            assert got.metrics == {"cost_usd": 1.0, "tokens_in": 7.0}
            assert got.feedback_metrics == {"cost_usd": [6.0, NOW + 20], "tokens_in": [3.0, NOW + 5]}
            m = store.stats("agent").metrics
            assert _approx(m["cost_usd"].mean, 4.0) and _approx(m["tokens_in"].mean, 3.0) and m["tokens_in"].n == 1
            # a late value of a metric the call did not have adds it
            store.write([], [Feedback("id-agent-2", metrics={"tokens_in": 5.0})])
            m = store.stats("agent").metrics
            assert m["tokens_in"].n == 2 and _approx(m["tokens_in"].mean, 4.0) and m["cost_usd"].n == 2

    def test_a_late_metric_before_its_call_waits_for_it(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([], [Feedback("id-agent-1", metrics={"tokens_out": 50.0}, ts=NOW + 20),
                             Feedback("id-agent-1", metrics={"tokens_out": 70.0, "quality": 0.5}, ts=NOW + 10)])
            assert store.get_call("id-agent-1") is None and store.stats("agent").metrics == {}
        with self.open_store(tmp_path) as store:  # kept across a reopen where the store persists
            if not self.persistent:
                store.write([], [Feedback("id-agent-1", metrics={"tokens_out": 50.0}, ts=NOW + 20),
                                 Feedback("id-agent-1", metrics={"tokens_out": 70.0, "quality": 0.5}, ts=NOW + 10)])
            changed = store.write([rec(1, metrics={"tokens_out": 10.0, "tokens_in": 1.0})])
            if changed is not None:
                assert [r.id for r in changed] == ["id-agent-1"]
            got = store.get_call("id-agent-1")
            assert got.feedback_metrics == {"tokens_out": [50.0, NOW + 20], "quality": [0.5, NOW + 10]}
            m = store.stats("agent").metrics
            assert (m["tokens_out"].n, m["tokens_in"].n, m["quality"].n) == (1, 1, 1)
            assert _approx(m["tokens_out"].mean, 50.0) and _approx(m["quality"].mean, 0.5)

    def test_metrics_survive_retention_in_the_aggregates(self, tmp_path):
        with self.open_store(tmp_path) as store:
            if "retention" not in store.capabilities:
                _skip(f"{type(self).__name__}: no retention (\"retention\" is not in capabilities)")
            now = time.time()
            store.write([rec(i, ts=now - 10 * 86400, metrics={"tokens_in": 100.0}) for i in range(3)]
                        + [rec(10 + i, ts=now - i, metrics={"tokens_in": 10.0}) for i in range(2)])
            assert store.retain(max_age_s=86400) == 3
            store.write([], [Feedback("id-agent-10", metrics={"tokens_in": 40.0})])
            store.write([rec(20, ts=now, metrics={"tokens_in": 10.0})])
            m = store.stats("agent").metrics["tokens_in"]
            assert m.n == 6 and _approx(m.mean, 360.0 / 6)
            recent = store.stats("agent", since=now - 3600).metrics["tokens_in"]
            assert recent.n == 3 and _approx(recent.mean, 20.0)
            # old hourly cells may go with retention; their metrics go with them, never apart
            window = store.stats("agent", since=now - 11 * 86400)
            assert window.metrics["tokens_in"].n == window.n and window.n in (3, 6)

    def test_read_calls_carry_metrics_and_late_values(self, tmp_path):
        with self.open_store(tmp_path) as store:
            store.write([rec(1, ts=NOW, metrics={"tokens_in": 12.0, "cost_usd": 0.25}), rec(2, ts=NOW + 1),
                         rec(3, ts=NOW + 2, score=0.75, metrics={"score": 0.1})])
            store.write([], [Feedback("id-agent-2", metrics={"tokens_in": 3.0}, ts=NOW + 50),
                             Feedback("id-agent-1", success=False, ts=NOW + 60)])
            rows = {r.id: r for r in store.read_calls("agent")}
            assert rows["id-agent-1"].metrics == {"tokens_in": 12.0, "cost_usd": 0.25}
            assert rows["id-agent-1"].feedback_metrics is None and rows["id-agent-1"].success is False
            assert rows["id-agent-2"].metrics is None
            assert rows["id-agent-2"].feedback_metrics == {"tokens_in": [3.0, NOW + 50]}
            assert rows["id-agent-2"].effective_metrics == {"tokens_in": 3.0}
            assert rows["id-agent-3"].effective_metrics == {"score": 0.75}  # ``score`` is the call's score
            assert store.stats("agent").metrics["score"].n == 1
        if self.persistent:
            with self.open_store(tmp_path) as again:
                assert again.get_call("id-agent-2").feedback_metrics == {"tokens_in": [3.0, NOW + 50]}
                assert again.stats("agent").metrics["tokens_in"].n == 2
