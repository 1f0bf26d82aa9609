"""Judge a candidate arm against its baseline from their aggregate cells.

Three metrics, each one-sided at ``alpha / 3`` (Bonferroni):

* success rate: the anytime-valid bound on ``p_candidate - p_baseline``; *regressed* when
  the upper bound is below 0 and the estimate is below ``-success_tolerance``
  (significant and material); *non-inferior* when the lower bound is above
  ``-success_tolerance``;
* latency: the same on the mean log-latency of successful calls (a ratio of geometric
  means), against ``ln(1 + latency_tolerance)``, and the slowdown must add at least
  ``latency_floor_s`` seconds (sub-millisecond jitter is not a regression);
* p95: once both arms have 60 successful calls, order-statistic bounds; *regressed* when
  the candidate's lower bound exceeds the baseline's upper bound times
  ``1 + latency_tolerance``. These bounds are fixed-sample, so p95 is looked at only at
  doubling sample sizes (60, 120, 240, ...) with the budget split across those looks.

Guardrails (``RolloutPolicy.metrics``, and the defaults of the reserved metrics) judge
every other numeric metric the baseline's calls carry, on the calls that carry it, with
the same confidence sequence on the difference of means (of the logs for a relative
guardrail): *regressed* when significantly worse and by more than its tolerance. Each
judged metric takes an equal share of ``alpha`` (3 + the number of guardrails in play),
so adding metrics does not add false rollbacks. A metric the baseline carries but the
candidate never reports is flagged in the evidence (``missing_metrics``).

*healthy* needs both arms at ``min_calls`` and success, latency and every judged metric
non-inferior (a metric still short of ``min_calls`` values in an arm is not yet).
"""

from __future__ import annotations

import math

from ..aggregates import Cell
from ..metrics import Guardrail
from ..policy import RolloutPolicy
from .quantiles import MIN_CALLS_P95, quantile_bounds
from .sequential import mean_diff_bounds, proportion_diff_bounds, tuning_rho
from .verdict import Verdict

__all__ = ("judge", "p95_look", "p95_looks")

TEST = "one-sided normal-mixture confidence sequence (anytime-valid), Bonferroni across the judged metrics"
_METRICS = 3  # success rate, latency, p95


def p95_looks(policy: RolloutPolicy) -> int:
    """How many p95 looks fit before the horizon (60, 120, 240, ... successful calls)."""
    return max(1, math.ceil(math.log2(max(policy.horizon, MIN_CALLS_P95) / MIN_CALLS_P95)) + 1)


def p95_look(lat_n: int) -> int:
    """The index of the last p95 look a sample of ``lat_n`` successful calls has passed."""
    return -1 if lat_n < MIN_CALLS_P95 else int(math.log2(lat_n / MIN_CALLS_P95))


def judge(baseline: Cell, candidate: Cell, policy: RolloutPolicy, *, check_p95: bool = False) -> Verdict:
    """The verdict on ``candidate`` vs ``baseline`` (see module docstring)."""
    rails = policy.guardrails(name for name, m in baseline.metrics.items() if m[0] >= 2)
    a_alpha = policy.alpha / (_METRICS + len(rails))
    rho = tuning_rho(policy.cs_tuning_n, a_alpha)
    n_a = baseline.successes + baseline.failures
    n_b = candidate.successes + candidate.failures
    evidence: dict = {
        "test": TEST,
        "alpha": policy.alpha,
        "alpha_per_metric": a_alpha,
        "metrics_judged": _METRICS + len(rails),
        "min_calls": policy.min_calls,
        "n": {"baseline": n_a, "candidate": n_b},
    }
    if n_a < policy.min_calls or n_b < policy.min_calls:
        return Verdict(Verdict.INCONCLUSIVE, f"collecting: {n_b} candidate and {n_a} baseline calls of {policy.min_calls}",
                       None, evidence)

    d, lo, hi = proportion_diff_bounds(baseline.successes, n_a, candidate.successes, n_b, a_alpha, rho)
    tol_s = policy.success_tolerance
    evidence["success_rate"] = {
        "baseline": baseline.successes / n_a, "candidate": candidate.successes / n_b,
        "diff": d, "lower": lo, "upper": hi, "tolerance": tol_s,
    }
    if hi < 0 and d < -tol_s:
        return Verdict(Verdict.REGRESSED,
                       f"success rate fell from {baseline.successes / n_a:.1%} to {candidate.successes / n_b:.1%} "
                       f"(difference {d:+.1%}, upper bound {hi:+.1%} < 0)", "success_rate", evidence)
    success_ok = lo > -tol_s

    latency_ok = False
    thr = math.log1p(policy.latency_tolerance)
    if baseline.lat_n >= 2 and candidate.lat_n >= 2:
        dl, lol, hil = mean_diff_bounds(baseline.lat_n, baseline.lat_sum, baseline.lat_sumsq,
                                        candidate.lat_n, candidate.lat_sum, candidate.lat_sumsq, a_alpha, rho)
        evidence["latency"] = {
            "baseline_median_s": math.exp(baseline.lat_sum / baseline.lat_n),
            "candidate_median_s": math.exp(candidate.lat_sum / candidate.lat_n),
            "ratio": math.exp(dl), "ratio_lower": math.exp(lol), "ratio_upper": math.exp(hil),
            "tolerance": policy.latency_tolerance,
        }
        mean_a = math.exp(baseline.lat_sum / baseline.lat_n)
        material = dl > thr and mean_a * (math.exp(dl) - 1) >= policy.latency_floor_s
        if lol > 0 and material:
            return Verdict(Verdict.REGRESSED,
                           f"latency rose {math.exp(dl) - 1:+.0%} (geometric mean of successful calls; "
                           f"lower bound {math.exp(lol) - 1:+.0%} > 0, tolerance {policy.latency_tolerance:.0%})",
                           "latency", evidence)
        latency_ok = hil < thr or mean_a * (math.exp(hil) - 1) < policy.latency_floor_s

    if check_p95 and baseline.lat_n >= MIN_CALLS_P95 and candidate.lat_n >= MIN_CALLS_P95:
        p_alpha = a_alpha / p95_looks(policy)
        qa, qb = quantile_bounds(baseline, 0.95, p_alpha), quantile_bounds(candidate, 0.95, p_alpha)
        if qa and qb:
            evidence["latency_p95"] = {
                "baseline": baseline.quantile(0.95), "candidate": candidate.quantile(0.95),
                "baseline_upper": qa[1], "candidate_lower": qb[0], "alpha": p_alpha,
                "tolerance": policy.latency_tolerance,
            }
            if qb[0] > qa[1] * (1 + policy.latency_tolerance) and qb[0] - qa[1] >= policy.latency_floor_s:
                return Verdict(Verdict.REGRESSED,
                               f"p95 latency rose from {baseline.quantile(0.95):.3g}s to {candidate.quantile(0.95):.3g}s "
                               f"(candidate lower bound {qb[0]:.3g}s > baseline upper bound x{1 + policy.latency_tolerance:g})",
                               "latency_p95", evidence)

    rails_ok = True
    missing = []
    worse: list[Verdict] = []  # every guardrail is read, so the evidence shows each metric
    for name, rail in rails.items():
        got = _guardrail(name, rail, baseline.metrics[name], candidate.metrics.get(name), policy, a_alpha, rho, evidence)
        if isinstance(got, Verdict):
            worse.append(got)
            continue
        if got is None and n_b >= policy.min_calls and not (candidate.metrics.get(name) or [0])[0]:
            missing.append(name)
        rails_ok = rails_ok and bool(got)
    if worse:
        also = [v.metric for v in worse[1:]]
        first = worse[0]
        return Verdict(first.kind, first.reason + (f"; also worse: {', '.join(also)}" if also else ""), first.metric,
                       evidence)
    note = ""
    if missing:
        evidence["missing_metrics"] = missing
        note = f"; the candidate reports no {', '.join(missing)} (the baseline does)"

    if success_ok and latency_ok and rails_ok:
        return Verdict(Verdict.HEALTHY, "non-inferior on success rate and latency"
                       + (f" and {', '.join(rails)}" if rails else "") + note, None, evidence)
    return Verdict(Verdict.INCONCLUSIVE, "no regression shown, not yet shown non-inferior" + note, None, evidence)


def _guardrail(name: str, rail: Guardrail, ma: list, mb: list | None, policy: RolloutPolicy, alpha: float,
               rho: float, evidence: dict) -> Verdict | bool | None:
    """One metric's reading: a REGRESSED verdict, ``True`` (non-inferior), ``False`` (not
    yet), or ``None`` (too few values in an arm to judge; ``evidence`` untouched)."""
    if rail.relative:
        n_a, s_a, q_a = ma[3], ma[4], ma[5]
        n_b, s_b, q_b = (mb[3], mb[4], mb[5]) if mb else (0, 0.0, 0.0)
    else:
        n_a, s_a, q_a = ma[0], ma[1], ma[2]
        n_b, s_b, q_b = (mb[0], mb[1], mb[2]) if mb else (0, 0.0, 0.0)
    if n_a < 2 or n_b < 2:
        return None
    d, lo, hi = mean_diff_bounds(int(n_a), s_a, q_a, int(n_b), s_b, q_b, alpha, rho)
    # how much worse the candidate is (d = candidate - baseline), and its bounds
    w, w_lo, w_hi = (-d, -hi, -lo) if rail.better == "higher" else (d, lo, hi)
    if rail.relative:
        margin = -math.log1p(-rail.tolerance) if rail.better == "higher" else math.log1p(rail.tolerance)
        shown = f"{math.exp(d) - 1:+.0%}"
        est = {"baseline": math.exp(s_a / n_a), "candidate": math.exp(s_b / n_b), "ratio": math.exp(d),
               "ratio_lower": math.exp(lo), "ratio_upper": math.exp(hi), "estimate": "geometric mean"}
    else:
        margin = rail.tolerance
        shown = f"{d:+.4g}"
        est = {"baseline": s_a / n_a, "candidate": s_b / n_b, "diff": d, "lower": lo, "upper": hi,
               "estimate": "mean"}
    evidence.setdefault("metrics", {})[name] = {
        **est, "n": {"baseline": int(n_a), "candidate": int(n_b)}, "better": rail.better,
        "tolerance": rail.tolerance, "relative": rail.relative,
    }
    if n_a < policy.min_calls or n_b < policy.min_calls:
        return False
    if w_lo > 0 and w > margin:
        return Verdict(Verdict.REGRESSED,
                       f"{name} got worse: {est['estimate']} {_fmt(est['baseline'])} -> {_fmt(est['candidate'])} "
                       f"({shown}; {rail.better} is better, tolerance {rail.tolerance:g}"
                       f"{' relative' if rail.relative else ''})", name, evidence)
    return w_hi < margin


def _fmt(x: float) -> str:
    return f"{x:.4g}"
