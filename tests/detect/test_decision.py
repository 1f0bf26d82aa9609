"""The decision table (``sil_core.detect.decision``) and the tripwire's outage rule
(``TripwireState.check``), as pure functions: no store, no clock."""

from __future__ import annotations

import pytest

from sil_core.aggregates import Cell, contribution
from sil_core.detect import TripwireState, Verdict
from sil_core.detect.decision import ADVANCE, PAUSE, PROMOTE, ROLLBACK, decide, settle
from sil_core.policy import RolloutPolicy
from sil_core.records import CallRecord, Outcome

HEALTHY = Verdict(Verdict.HEALTHY, "non-inferior", "success_rate", {"n": {"candidate": 400}})
REGRESSED = Verdict(Verdict.REGRESSED, "worse", "success_rate")
WAITING = Verdict(Verdict.INCONCLUSIVE, "collecting", None)
POLICY = RolloutPolicy(min_calls=30, ramp=(0.1, 0.5, 1.0), step_calls=100, horizon=1000)


@pytest.mark.parametrize("verdict, last_step, n, started, expected", [
    (REGRESSED, False, 40, 0, ROLLBACK),
    (REGRESSED, True, 40, 0, ROLLBACK),
    (HEALTHY, True, 400, 0, PROMOTE),
    (HEALTHY, False, 400, 300, ADVANCE),      # healthy at an early step: ramp on at once
    (WAITING, False, 150, 40, ADVANCE),       # step_calls reached at this step
    (WAITING, False, 120, 40, None),          # not yet
    (WAITING, True, 999, 0, None),            # last step, below the horizon: keep collecting
])
def test_the_table(verdict, last_step, n, started, expected):
    got = decide(verdict, POLICY, candidate_calls=n, last_step=last_step, step_started_n=started)
    assert got.action == expected and got.verdict == verdict


@pytest.mark.parametrize("on_inconclusive, expected", [("keep", PROMOTE), ("hold", PAUSE), ("rollback", ROLLBACK)])
def test_the_horizon_applies_on_inconclusive(on_inconclusive, expected):
    policy = RolloutPolicy(horizon=500, on_inconclusive=on_inconclusive)
    got = decide(WAITING, policy, candidate_calls=500, last_step=True)
    assert got.action == expected and got.verdict.metric == "horizon" and "horizon of 500" in got.verdict.reason


def test_a_fired_tripwire_rolls_back_with_its_evidence():
    fired = {"calls": ["a", "b", "c"], "judged_failed": 2}
    got = decide(HEALTHY, POLICY, candidate_calls=3, last_step=True, tripwire=fired)
    assert got.action == ROLLBACK and got.verdict.metric == "tripwire"
    assert got.verdict.evidence["tripwire"] == fired and "2 judged failed" in got.verdict.reason


def test_observe_only_never_ramps():
    policy = RolloutPolicy(ramp=(0.1, 1.0), observe_only=True)
    assert decide(HEALTHY, policy, candidate_calls=400, last_step=False).action is None
    assert decide(REGRESSED, policy, candidate_calls=400, last_step=False).action == ROLLBACK  # the caller records it


def cell(successes: int, failures: int) -> Cell:
    """The cell of ``successes`` good and ``failures`` failed calls of about 0.1 s."""
    out = Cell()
    for i in range(successes + failures):
        ok = i < successes
        record = CallRecord(f"c{i}", "t", 1.0, 0.1 + (i % 7) / 1000, Outcome.OK if ok else Outcome.ERROR)
        out.add(contribution(record))
    return out


def test_settle_waits_when_the_window_cannot_be_read_back():
    policy = RolloutPolicy(feedback_window_s=20)
    got = settle(decide(HEALTHY, policy, candidate_calls=400, last_step=True), policy, None)
    assert got.action is None and "waiting for feedback" in got.verdict.reason


def test_settle_turns_a_promotion_into_a_rollback_when_older_calls_regressed():
    policy = RolloutPolicy(feedback_window_s=20, min_calls=30)
    base, cand = cell(380, 20), cell(200, 200)  # once their feedback arrived: 50 % vs 95 %
    got = settle(decide(HEALTHY, policy, candidate_calls=400, last_step=True), policy, (base, cand))
    assert got.action == ROLLBACK and got.verdict.evidence["feedback_window_s"] == 20


def test_settle_promotes_on_settled_healthy_calls():
    policy = RolloutPolicy(feedback_window_s=20, min_calls=30)
    base, cand = cell(3960, 40), cell(3960, 40)
    got = settle(decide(HEALTHY, policy, candidate_calls=4000, last_step=True), policy, (base, cand))
    assert got.action == PROMOTE and "feedback window" in got.verdict.reason


def baseline(calls: int, failures: int):
    asked = []

    def since(ts: float) -> tuple[int, int]:
        asked.append(ts)
        return calls, failures

    return since, asked


def test_the_tripwire_fires_on_a_run_with_a_healthy_baseline():
    state = TripwireState(limit=3, window=10)
    for i, ok in enumerate([True, False, False, False]):
        state.add(100.0 + i, f"c{i}", ok)
    since, asked = baseline(20, 1)
    assert state.check(50.0, since, now=200.0, by="w1") is True
    assert asked == [100.0]  # the baseline since the call before the run
    assert state.fired["calls"] == ["c1", "c2", "c3"] and state.fired["by"] == "w1"
    assert state.check(50.0, since, now=201.0, by="w2") is False  # fires once


def test_the_tripwire_stands_down_in_an_outage():
    state = TripwireState(limit=3, window=10)
    for i in range(3):
        state.add(100.0 + i, f"c{i}", False)
    since, asked = baseline(6, 4)  # the baseline fails as well
    assert state.check(50.0, since, now=200.0, by="w1") is False and state.fired is None
    assert asked == [50.0]  # a run from the first call: the baseline since the change started


def test_the_tripwire_needs_a_full_run():
    state = TripwireState(limit=3, window=10)
    for i, ok in enumerate([False, False, True, False, False]):
        state.add(100.0 + i, f"c{i}", ok)
    assert state.check(50.0, baseline(0, 0)[0], now=200.0, by="w1") is False
