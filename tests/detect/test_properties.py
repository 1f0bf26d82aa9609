"""Property tests of the statistics: aggregate cells (add, remove, merge, Stats) and the
sequential detector (bounds vs alpha, monotonicity, symmetry), plus the tripwire state.

Tests marked ``xfail(strict=True)`` pin a real defect or a surprising property found
here; each reason says what it is. When the code changes, the XPASS tells you to drop it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from sil_core.aggregates import (
    ALL_TIME, FIELDS, Cell, Stats, add_record, cells_for, contribution, feedback_delta, merge, wilson,
)
from sil_core.detect import TripwireState, Verdict, judge
from sil_core.detect.quantiles import quantile_bounds
from sil_core.detect.sequential import mean_diff_bounds, proportion_diff_bounds, tuning_rho
from sil_core.detect.tripwire import ConsecutiveFailures
from sil_core.policy import RolloutPolicy
from sil_core.records import CallRecord, Outcome

FAST = settings(max_examples=60, deadline=None)
MEDIUM = settings(max_examples=120, deadline=None)

INT_FIELDS = tuple(f for f in FIELDS if not f.startswith(("lat_s", "score_s")))
FLOAT_FIELDS = tuple(f for f in FIELDS if f not in INT_FIELDS)
ORDER = {Verdict.REGRESSED: 0, Verdict.INCONCLUSIVE: 1, Verdict.HEALTHY: 2}


def assert_cells_close(a: Cell, b: Cell) -> None:
    for name in INT_FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    for name in FLOAT_FIELDS:
        assert math.isclose(getattr(a, name), getattr(b, name), rel_tol=1e-9, abs_tol=1e-7), name
    assert a.hist == b.hist


# --------------------------------------------------------------------------------------
# strategies

finite = dict(allow_nan=False, allow_infinity=False)
durations = st.one_of(st.just(0.0), st.floats(1e-9, 600.0, **finite))
scores = st.one_of(st.none(), st.floats(-1e3, 1e3, **finite))


@st.composite
def records(draw, ts=st.floats(0.0, 2e9, **finite)) -> CallRecord:
    return CallRecord(
        id=draw(st.text("abcdef0123456789", min_size=1, max_size=8)),
        target="t",
        ts=draw(ts),
        duration_s=draw(durations),
        outcome=draw(st.sampled_from(Outcome.ALL)),
        version=draw(st.sampled_from([None, "v1", "v2"])),
        arm=draw(st.sampled_from([None, "baseline", "candidate"])),
        score=draw(scores),
        feedback_success=draw(st.sampled_from([None, True, False])),
        feedback_score=draw(scores),
    )


def cell_of(recs) -> Cell:
    cell = Cell()
    for r in recs:
        add_record(cell, r)
    return cell


cells = st.lists(records(), max_size=12).map(cell_of)


# --------------------------------------------------------------------------------------
# aggregates


@FAST
@given(cells, cells)
def test_add_then_remove_a_cell_restores_the_original(a, b):
    original = a.copy()
    a.add(b).add(b, -1)
    assert_cells_close(a, original)


@FAST
@given(cells, records())
def test_add_then_remove_a_records_contribution_restores_the_original(a, rec):
    original = a.copy()
    add_record(a, rec)
    a.add(contribution(rec), -1)
    assert_cells_close(a, original)


@FAST
@given(st.lists(records(), max_size=12))
def test_removing_every_contribution_leaves_a_zero_cell(recs):
    cell = cell_of(recs)
    for r in recs:
        cell.add(contribution(r), -1)
    assert not cell.hist
    for name in INT_FIELDS:
        assert getattr(cell, name) == 0
    for name in FLOAT_FIELDS:
        assert abs(getattr(cell, name)) < 1e-6 * (1 + len(recs)) * 300


@FAST
@given(cells, cells, cells)
def test_merge_is_associative(a, b, c):
    assert_cells_close(merge([merge([a, b]), c]), merge([a, merge([b, c])]))
    assert_cells_close(merge([a, b, c]), merge([merge([a, b]), c]))


@FAST
@given(cells, cells)
def test_merge_is_commutative(a, b):
    assert_cells_close(merge([a, b]), merge([b, a]))


@FAST
@given(cells)
def test_merge_of_empty_is_the_identity_and_merge_copies(a):
    original = a.copy()
    assert merge([]).is_zero()
    assert_cells_close(merge([a, Cell()]), a)
    assert_cells_close(merge([Cell(), a]), a)
    m = merge([a])
    assert_cells_close(m, a)
    m.add(a)  # the merged cell is a new object: the inputs are not touched
    assert_cells_close(a, original)


@FAST
@given(st.lists(st.lists(records(), max_size=8), max_size=4))
def test_stats_of_merged_cells_equal_stats_of_the_combined_records(groups):
    merged = merge(cell_of(g) for g in groups)
    combined = [r for g in groups for r in g]
    got, want = Stats.from_cell("t", merged), Stats.from_cell("t", cell_of(combined))
    for name in ("n", "successes", "failures", "interrupted", "cancelled", "blocked", "score_n",
                 "attempt_errors", "retried", "success_ci", "success_rate", "p50_s", "p95_s"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("mean_log_latency", "score_mean"):
        x, y = getattr(got, name), getattr(want, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
    # and against the records themselves
    decided = [r.success for r in combined if r.success is not None]
    assert got.n == len(combined)
    assert got.successes == decided.count(True) and got.failures == decided.count(False)
    if decided:
        assert got.success_rate == decided.count(True) / len(decided)
        lo, hi = got.success_ci
        assert 0.0 <= lo <= got.success_rate + 1e-12 and got.success_rate <= hi + 1e-12 and hi <= 1.0  # see xfail below
    else:
        assert got.success_rate is None and got.success_ci is None
    ok_logs = [math.log(max(r.duration_s, 1e-7)) for r in combined if r.success is True]
    if ok_logs:
        assert math.isclose(got.mean_log_latency, sum(ok_logs) / len(ok_logs), rel_tol=1e-9, abs_tol=1e-9)
    scored = [r.effective_score for r in combined if r.effective_score is not None]
    assert got.score_n == len(scored)


@pytest.mark.xfail(strict=True, reason=(
    "BUG (cosmetic, float rounding): wilson(n, n) can return an upper bound of "
    "0.9999999999999999 (n = 10, 13, 25, ...) and wilson(0, n) a lower bound just above 0 "
    "(n = 3, 6, 7, ...): the 95 % interval then excludes the observed rate 1.0 or 0.0; "
    "clamping the extremes (or min/max with p) would fix it"))
def test_wilson_interval_contains_the_observed_rate_at_the_extremes():
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 3)[0] == 0.0
    for n in range(1, 300):
        for s in (0, n):
            lo, hi = wilson(s, n)
            assert lo <= s / n <= hi


@FAST
@given(st.lists(records(), min_size=1, max_size=6), st.sampled_from([None, True, False]), scores)
def test_feedback_delta_turns_before_into_after(recs, fb, fb_score):
    before = recs[0]
    after = replace(before, feedback_success=fb, feedback_score=fb_score)
    cell = cell_of(recs)
    for key, delta in feedback_delta(before, after).items():
        assert key[3] in (ALL_TIME, int(after.ts // 3600))
        if key[3] == ALL_TIME:
            cell.add(delta)
    assert_cells_close(cell, cell_of([after, *recs[1:]]))


@FAST
@given(st.lists(records(), max_size=12))
def test_all_time_cells_are_the_sum_of_the_hour_cells(recs):
    out = cells_for(recs)
    for key, cell in out.items():
        if key[3] != ALL_TIME:
            continue
        hours = [c for k, c in out.items() if k[:3] == key[:3] and k[3] != ALL_TIME]
        assert_cells_close(cell, merge(hours))
        same = [r for r in recs if (r.target, r.version or "", r.arm or "") == key[:3]]
        assert_cells_close(cell, cell_of(same))


@pytest.mark.xfail(strict=True, reason=(
    "BUG (edge): cells_for/keys_for use hour = ts // 3600 and ALL_TIME = -1, so a record with "
    "ts in [-3600, 0) gets an hour key equal to the all-time key: the hour cell and the "
    "all-time cell are the same object and it is added to itself (counts doubled); "
    "feedback_delta then yields one key instead of two"))
def test_negative_timestamps_do_not_collide_with_the_all_time_cell():
    recs = [CallRecord(id="a", target="t", ts=-1.0, duration_s=1.0, outcome=Outcome.OK)]
    out = cells_for(recs)
    assert out[("t", "", "", ALL_TIME)].n == 1


# --------------------------------------------------------------------------------------
# detect: bounds vs alpha

alphas = st.floats(1e-4, 0.5, **finite)


@st.composite
def prop_counts(draw):
    n_a = draw(st.integers(1, 5000))
    n_b = draw(st.integers(1, 5000))
    return draw(st.integers(0, n_a)), n_a, draw(st.integers(0, n_b)), n_b


@MEDIUM
@given(prop_counts(), alphas, alphas, st.integers(1, 2000))
def test_proportion_bounds_widen_as_alpha_shrinks(counts, a1, a2, tuning_n):
    small, big = sorted((a1, a2))
    # with the same rho, and with rho tuned to each alpha as judge() does
    for rho_s, rho_b in ((50.0, 50.0), (tuning_rho(tuning_n, small), tuning_rho(tuning_n, big))):
        d1, lo_s, hi_s = proportion_diff_bounds(*counts, small, rho_s)
        d2, lo_b, hi_b = proportion_diff_bounds(*counts, big, rho_b)
        assert d1 == d2
        assert lo_s <= lo_b + 1e-12 and hi_s >= hi_b - 1e-12
        assert lo_s <= d1 <= hi_s


@MEDIUM
@given(st.integers(2, 5000), st.floats(-3, 3, **finite), st.floats(0, 2, **finite),
       st.integers(2, 5000), st.floats(-3, 3, **finite), st.floats(0, 2, **finite),
       alphas, alphas, st.integers(1, 2000))
def test_mean_bounds_widen_as_alpha_shrinks(n_a, m_a, s_a, n_b, m_b, s_b, a1, a2, tuning_n):
    small, big = sorted((a1, a2))
    sums = (n_a, n_a * m_a, n_a * (m_a * m_a + s_a * s_a), n_b, n_b * m_b, n_b * (m_b * m_b + s_b * s_b))
    for rho_s, rho_b in ((50.0, 50.0), (tuning_rho(tuning_n, small), tuning_rho(tuning_n, big))):
        d1, lo_s, hi_s = mean_diff_bounds(*sums, small, rho_s)
        d2, lo_b, hi_b = mean_diff_bounds(*sums, big, rho_b)
        assert lo_s <= lo_b + 1e-12 and hi_s >= hi_b - 1e-12
        assert lo_s <= d1 <= hi_s


@FAST
@given(st.dictionaries(st.integers(-40, 40), st.integers(1, 50), min_size=1, max_size=10), alphas, alphas)
def test_quantile_bounds_widen_as_alpha_shrinks(hist, a1, a2):
    small, big = sorted((a1, a2))
    cell = Cell(hist=hist)
    lo_s, hi_s = quantile_bounds(cell, 0.95, small)
    lo_b, hi_b = quantile_bounds(cell, 0.95, big)
    assert lo_s <= lo_b and hi_s >= hi_b
    assert lo_b <= cell.quantile(0.95) <= hi_b


def lat_cell(s: int, f: int, lat_n: int, mean: float, sd: float, extra: dict | None = None) -> Cell:
    cell = Cell(n=s + f, n_ok=s, n_error=f, successes=s, failures=f,
                lat_n=lat_n, lat_sum=lat_n * mean, lat_sumsq=lat_n * (mean * mean + sd * sd))
    if extra:
        cell.hist = dict(extra)
    return cell


@st.composite
def arm(draw, max_n=3000):
    n = draw(st.integers(30, max_n))
    s = draw(st.integers(0, n))
    lat_n = draw(st.integers(2, 3000))
    return s, n - s, lat_n, draw(st.floats(-1.0, 1.0, **finite)), draw(st.floats(0.0, 1.0, **finite))


@MEDIUM
@given(arm(), arm(), alphas, alphas)
def test_judge_bounds_widen_and_regressed_survives_a_larger_alpha(a, b, a1, a2):
    small, big = sorted((a1, a2))
    base, cand = lat_cell(*a), lat_cell(*b)
    v_s = judge(base, cand, RolloutPolicy(alpha=small))
    v_b = judge(base, cand, RolloutPolicy(alpha=big))
    for metric in ("success_rate", "latency"):
        if metric in v_s.evidence and metric in v_b.evidence:
            es, eb = v_s.evidence[metric], v_b.evidence[metric]
            lo, hi = ("lower", "upper") if metric == "success_rate" else ("ratio_lower", "ratio_upper")
            assert es[lo] <= eb[lo] + 1e-12 and es[hi] >= eb[hi] - 1e-12
    if v_s.kind == Verdict.REGRESSED:
        assert v_b.kind == Verdict.REGRESSED


# --------------------------------------------------------------------------------------
# detect: monotone in the candidate's failures


@MEDIUM
@given(arm(), st.integers(30, 3000), st.data(), st.integers(2, 3000), st.floats(-1, 1, **finite),
       st.floats(0, 1, **finite), st.floats(0.0, 0.2, **finite))
def test_verdict_never_improves_when_candidate_failures_go_up(a, n_b, data, lat_n, mean, sd, tol):
    """Same candidate n, one success turned into a failure, latency evidence held fixed:
    the verdict (REGRESSED < INCONCLUSIVE < HEALTHY) never goes up. The candidate keeps at
    least half its calls successful: below that the property fails (see the xfail below)."""
    f = data.draw(st.integers(0, n_b // 2 - 1))
    base = lat_cell(*a)
    policy = RolloutPolicy(success_tolerance=tol)
    before = judge(base, lat_cell(n_b - f, f, lat_n, mean, sd), policy)
    after = judge(base, lat_cell(n_b - f - 1, f + 1, lat_n, mean, sd), policy)
    assert ORDER[after.kind] <= ORDER[before.kind], (before.reason, after.reason)


@FAST
@given(arm(), st.integers(30, 300), st.integers(2, 1000), st.floats(-1, 1, **finite), st.floats(0, 1, **finite))
def test_verdict_monotone_along_a_whole_failure_sweep(a, n_b, lat_n, mean, sd):
    base = lat_cell(*a)
    policy = RolloutPolicy()
    kinds = [ORDER[judge(base, lat_cell(n_b - f, f, lat_n, mean, sd), policy).kind] for f in range(0, n_b // 2 + 1, 3)]
    assert kinds == sorted(kinds, reverse=True)


@pytest.mark.xfail(strict=True, reason=(
    "SURPRISING (degenerate region): the success-rate variance uses each arm's own "
    "(s + 1) / (n + 2), so a candidate that fails nearly always has a *smaller* standard "
    "error when it fails more; against a baseline at 0/10000, a candidate with 1 success in "
    "158 calls is INCONCLUSIVE but with 0 successes in 158 calls is HEALTHY (lower bound "
    "-0.0199 > -0.02). Only when both arms succeed < ~tolerance of the time"))
def test_verdict_monotone_in_failures_even_for_failing_arms():
    def cell(s, f):
        return Cell(n=s + f, successes=s, failures=f, lat_n=100, lat_sum=0.0, lat_sumsq=1.0)

    base, policy = cell(0, 10_000), RolloutPolicy()
    assert judge(base, cell(1, 157), policy).kind == Verdict.INCONCLUSIVE
    assert judge(base, cell(0, 158), policy).kind != Verdict.HEALTHY


@pytest.mark.xfail(strict=True, reason=(
    "SURPRISING (by design?): latency is judged on successful calls only, so when a success "
    "turns into a failure the latency sample shrinks and its bound widens: a candidate "
    "REGRESSED on latency (30 calls, all ok, +22 % geometric mean vs a 950/1000 baseline) "
    "becomes INCONCLUSIVE with one failure more (29 ok + 1 failure)"))
def test_more_failures_never_hide_a_latency_regression():
    def cell(s, f, mu):
        return Cell(n=s + f, successes=s, failures=f, lat_n=s, lat_sum=s * mu, lat_sumsq=s * (mu * mu + 0.09))

    base, policy = cell(950, 50, 0.0), RolloutPolicy()
    before = judge(base, cell(30, 0, 0.2), policy)
    assert (before.kind, before.metric) == (Verdict.REGRESSED, "latency")
    after = judge(base, cell(29, 1, 0.2), policy)
    assert after.kind == Verdict.REGRESSED


# --------------------------------------------------------------------------------------
# detect: symmetric


@FAST
@given(st.integers(30, 5000), st.data(), st.floats(-3, 3, **finite), st.floats(0, 2, **finite),
       st.dictionaries(st.integers(-40, 40), st.integers(1, 100), max_size=12), st.booleans(),
       st.floats(0.0, 0.2, **finite), st.floats(0.0, 1.0, **finite))
def test_identical_arms_are_never_regressed(n, data, mean, sd, hist, p95, tol_s, tol_l):
    s = data.draw(st.integers(0, n))
    cell = lat_cell(s, n - s, max(2, s), mean, sd, hist)
    policy = RolloutPolicy(success_tolerance=tol_s, latency_tolerance=tol_l, latency_floor_s=0.0)
    assert judge(cell, cell.copy(), policy, check_p95=p95).kind != Verdict.REGRESSED


@FAST
@given(st.integers(0, 3), st.floats(0.3, 0.97), st.floats(0.05, 1.0))
def test_identical_arms_with_enough_calls_are_healthy(scale, p, sd):
    n = 20000 * 2 ** scale
    s = round(n * p)
    cell = lat_cell(s, n - s, s, 0.0, sd)
    assert judge(cell, cell.copy(), RolloutPolicy()).kind == Verdict.HEALTHY


# --------------------------------------------------------------------------------------
# tripwire


def _ref_run(flags: list[bool], limit: int) -> tuple[int, int] | None:
    for last in range(limit - 1, len(flags)):
        if not any(flags[last - limit + 1:last + 1]):
            return last - limit + 1, last
    return None


@FAST
@given(st.integers(1, 8), st.lists(st.sampled_from([True, False, None]), max_size=60))
def test_consecutive_failures_fires_exactly_on_a_run_of_limit(limit, seen):
    wire = ConsecutiveFailures(limit)
    decided: list[bool] = []
    for ok in seen:
        fired = wire.observe(ok)
        if ok is not None:
            decided.append(ok)
        run = len(decided) - max((i + 1 for i, x in enumerate(decided) if x), default=0)
        assert fired == (ok is not None and run >= limit)


@st.composite
def tripwire_calls(draw, distinct_ts=True):
    n = draw(st.integers(0, 40))
    ts = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=distinct_ts))
    ids = [f"c{i:03d}" for i in range(n)]
    oks = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    judged = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return [(float(t), i, ok, j and not ok) for t, i, ok, j in zip(ts, ids, oks, judged)]


@MEDIUM
@given(st.integers(1, 8), st.integers(1, 30), tripwire_calls(), st.randoms(use_true_random=False))
def test_tripwire_state_keeps_the_first_window_calls_and_fires_only_on_a_run(limit, window, calls, rnd):
    state = TripwireState(limit, window)
    order = list(calls)
    rnd.shuffle(order)
    for ts, cid, ok, judged in order:
        state.add(ts, cid, ok, judged=judged)
    want = sorted(calls)[:window]
    assert [e[1] for e in state.calls] == [c[1] for c in want]  # independent of arrival order
    assert state.full() == (len(calls) >= window)
    flags = [e[2] for e in state.calls]
    run = state.failure_run()
    assert run == _ref_run(flags, limit)
    if run is not None:
        first, last = run
        assert last - first + 1 == limit and not any(flags[first:last + 1])
    for ts, cid, ok, judged in order:  # re-adding is a no-op
        assert state.add(ts, cid, ok, judged=judged) is False


@FAST
@given(st.integers(1, 5), st.integers(1, 20), tripwire_calls(), st.data())
def test_tripwire_override_replaces_a_calls_verdict(limit, window, calls, data):
    state = TripwireState(limit, window)
    for ts, cid, ok, judged in calls:
        state.add(ts, cid, ok, judged=judged)
    assume(state.calls)
    entry = data.draw(st.sampled_from(state.calls))
    ok = not entry[2]
    assert state.add(entry[0], entry[1], ok, judged=not ok, override=True) is True
    assert entry[2] is ok and entry[3] is (not ok)
    assert state.add(entry[0], entry[1], ok, override=True) is False  # same verdict: no change


@pytest.mark.xfail(strict=True, reason=(
    "BUG (minor): TripwireState.add orders calls by (ts, call_id) but rejects a call as "
    "'past the window' when ts >= the last kept ts, ignoring call_id; with equal timestamps "
    "(coarse clocks, several workers) the window's content depends on arrival order"))
def test_tripwire_window_with_equal_timestamps_is_independent_of_arrival_order():
    one, two = TripwireState(5, 2), TripwireState(5, 2)
    for cid, ts in (("b", 1.0), ("z", 2.0), ("a", 2.0)):
        one.add(ts, cid, True)
    for cid, ts in (("b", 1.0), ("a", 2.0), ("z", 2.0)):
        two.add(ts, cid, True)
    assert one.calls == two.calls


fired = st.one_of(st.none(), st.fixed_dictionaries({
    "ts": st.floats(0, 2e9, **finite), "by": st.text(max_size=5),
    "calls": st.lists(st.text(max_size=4), max_size=5), "judged_failed": st.integers(0, 5)}))


@FAST
@given(st.integers(1, 8), st.integers(1, 30), tripwire_calls(distinct_ts=False), fired)
def test_tripwire_state_round_trips(limit, window, calls, fire):
    state = TripwireState(limit, window)
    for ts, cid, ok, judged in calls:
        state.add(ts, cid, ok, judged=judged)
    state.fired = fire
    assert TripwireState.from_dict(state.as_dict()) == state
    assert TripwireState.from_dict(json.loads(json.dumps(state.as_dict()))) == state
    # rows written before ``judged`` existed hold three fields: judged defaults to False
    legacy = {**state.as_dict(), "calls": [e[:3] for e in state.calls]}
    assert [e[3] for e in TripwireState.from_dict(legacy).calls] == [False] * len(state.calls)


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=20), st.sampled_from([None, "success_rate", "latency", "tripwire"]),
       st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.floats(**finite), st.text(max_size=5)),
                       max_size=4))
@example("", None, {})
def test_verdict_round_trips(reason, metric, evidence):
    for kind in (Verdict.HEALTHY, Verdict.REGRESSED, Verdict.INCONCLUSIVE):
        v = Verdict(kind, reason, metric, evidence)
        assert Verdict.from_dict(v.as_dict()) == v
        assert Verdict.from_dict(json.loads(json.dumps(v.as_dict()))) == v
