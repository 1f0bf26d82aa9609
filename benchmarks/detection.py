#!/usr/bin/env python3
"""How well sil-guard's detector tells harmful changes from neutral ones, next to the seed.

A Monte Carlo simulation with known truth. Each scenario gives a baseline and a candidate
distribution; each run simulates one change from start to decision, once under
sil-guard's lifecycle and detector and once under the seed's rollback rules
(self-improving-loop 0.1.3, re-implemented from its source; see
``docs/statistics.md``, "What benchmarks/detection.py measures"). It reports the rollback rate (a
*false* rollback for a neutral change, *detection* for a harmful one) and the calls to
detect (median and 95th percentile over the runs that rolled back).

Calls. Success is Bernoulli(p); latency is log-normal, ``ln(latency) ~ N(ln(1 s), sigma)``,
drawn for failed calls too (the seed averages over all calls; sil-guard only reads
successful calls' latency).

sil-guard (canary mode, as the lifecycle runs it). Both arms start together (no warm
baseline). Calls arrive one at a time; each goes to the candidate with the current ramp
weight (``policy.ramp``), otherwise to the baseline. Each call is added to its arm's
aggregate ``Cell`` (``sil_core.aggregates.add_record``); after every *candidate* call:

1. while the candidate has at most ``policy.min_calls`` calls (before the statistical test
   has its minimum sample), the tripwire ``ConsecutiveFailures(policy.tripwire_consecutive)``
   sees its outcome and rolls back at once, unless it stands down because the baseline
   calls made since the candidate's failure run began include >= 2 failures and are >= 50 %
   failures: an outage, not the change (the rule of ``sil_core.detect.tripwire``);
2. ``judge(baseline, candidate, policy, check_p95=...)`` runs, with ``check_p95`` true only
   on the call where the candidate's successful-call count reaches the next p95 look
   (``detect.detector.p95_look``): *regressed* rolls back; *healthy* promotes at the last
   ramp step and advances the ramp before it; after ``policy.step_calls`` candidate calls
   at a step the ramp advances anyway (it stays at the last weight);
3. at ``policy.horizon`` candidate calls ``policy.on_inconclusive`` settles the change
   (default ``keep``: promoted).

Calls to detect = candidate calls at the rollback.

The seed (switch mode). Every call after the change goes to the candidate. Its before-window
is 50 calls of the baseline distribution (an unbiased baseline, kinder than the seed's
real, trigger-biased one), summarised like its ``_calculate_metrics``: success rate and
mean duration over *all* calls. From the 10th after-call on, on every call, the first
matching rule rolls back: (1) ``before_sr > 0 and before_sr - after_sr > 0.10``;
(2) ``before_avg > 0 and (after_avg - before_avg) / before_avg > 0.20``; (3) the after
window ends in >= 5 consecutive failures. Horizon: 1,000 after-calls. Calls to detect =
after-calls at the rollback.

Quality and cost. In the scenarios that carry them, each call also has an evaluator's
score, ``N(score, 0.15)`` clipped to [0, 1], and a token count, log-normal with median
``tokens`` and log-sigma 0.4 (``tokens_out``); sil-guard judges them with the default
guardrails (score higher-is-better within 0.05, tokens lower-is-better within +20 %),
each taking its share of alpha. The seed has no rule for either.

Outage after promotion. A neutral change (p 0.95, sigma 0.3) runs its course; then 500
normal calls and an outage of 10 consecutive failures. sil-guard stops judging a change
once it is promoted (design §5), so the outage cannot roll it back; the rate is over the
runs that were promoted. The seed never confirms a change, its rules keep running (seed
bug B2); its rate is over the runs that survived the 500 normal calls.

Outage during the canary (informational, no target). A neutral change; 20 candidate calls
into the last ramp step (by the schedule), 10 consecutive calls of *both* arms fail. The
rate counts rollbacks decided on a call of the outage.

Targets: <= 5 % false rollbacks in every neutral scenario; 0.95 -> 0.80 caught in >= 95 % of
runs within 150 candidate calls; latency +50 % (sigma 0.3) caught in >= 95 % within 100
(sigma 0.6 reported against the same bar); 100 % failure caught within 5 candidate calls
in >= 95 % of runs; no rollback caused by an outage after promotion; score 0.82 -> 0.64 and
tokens x1.6 (success unchanged) rolled back in >= 95 % of runs.

Each run's random stream depends only on (seed, system, scenario, run index), so results
do not depend on ``--workers``. About 20 s with the defaults on 2 cores.

Run: ``python benchmarks/detection.py [--json] [--quick] [--runs N] [--seed S]
[--policy key=value ...] [--workers N] [--scenarios key,key]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import loadavg, log, machine_info  # noqa: E402

from sil_core.aggregates import Cell, add_record, wilson  # noqa: E402
from sil_core.detect.detector import judge, p95_look  # noqa: E402
from sil_core.detect.tripwire import ConsecutiveFailures  # noqa: E402
from sil_core.detect.verdict import Verdict  # noqa: E402
from sil_core.policy import RolloutPolicy  # noqa: E402
from sil_core.records import CallRecord, Outcome  # noqa: E402

RUNS = 500
QUICK_RUNS = 100
SEED_BEFORE_CALLS = 50
SEED_GATE = 10
SEED_HORIZON = 1000
SEED_SR_DROP = 0.10
SEED_LAT_RISE = 0.20
SEED_CONSECUTIVE = 5
STANDDOWN_FAILURE_RATE = 0.5
OUTAGE_NORMAL_CALLS = 500
OUTAGE_CALLS = 10
CANARY_OUTAGE_INTO_LAST_STEP = 20
MEDIAN_S = 1.0
SCORE_SD = 0.15
TOKENS_SIGMA = 0.4


@dataclass(frozen=True, slots=True)
class Arm:
    success: float
    sigma: float
    median_s: float = MEDIAN_S
    score: float | None = None  # mean evaluator score (sd SCORE_SD, clipped to [0, 1])
    tokens: float | None = None  # median tokens_out (log-sigma TOKENS_SIGMA)


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    kind: str  # neutral | harmful | outage_after_promotion | outage_in_canary
    baseline: Arm
    candidate: Arm


SCENARIOS = (
    Scenario("neutral-p90-s03", "neutral, p 0.90, sigma 0.3", "neutral", Arm(0.90, 0.3), Arm(0.90, 0.3)),
    Scenario("neutral-p90-s06", "neutral, p 0.90, sigma 0.6", "neutral", Arm(0.90, 0.6), Arm(0.90, 0.6)),
    Scenario("neutral-p95-s03", "neutral, p 0.95, sigma 0.3", "neutral", Arm(0.95, 0.3), Arm(0.95, 0.3)),
    Scenario("neutral-p95-s06", "neutral, p 0.95, sigma 0.6", "neutral", Arm(0.95, 0.6), Arm(0.95, 0.6)),
    Scenario("neutral-p80-s03", "neutral, p 0.80, sigma 0.3 (a less reliable agent)", "neutral",
             Arm(0.80, 0.3), Arm(0.80, 0.3)),
    Scenario("success-95-80", "success 0.95 -> 0.80", "harmful", Arm(0.95, 0.3), Arm(0.80, 0.3)),
    Scenario("success-95-90", "success 0.95 -> 0.90", "harmful", Arm(0.95, 0.3), Arm(0.90, 0.3)),
    Scenario("latency-50-s03", "latency +50 %, sigma 0.3", "harmful", Arm(0.95, 0.3), Arm(0.95, 0.3, MEDIAN_S * 1.5)),
    Scenario("latency-50-s06", "latency +50 %, sigma 0.6", "harmful", Arm(0.95, 0.6), Arm(0.95, 0.6, MEDIAN_S * 1.5)),
    Scenario("latency-20-s03", "latency +20 %, sigma 0.3", "harmful", Arm(0.95, 0.3), Arm(0.95, 0.3, MEDIAN_S * 1.2)),
    Scenario("fail-100", "100 % failure (0.95 -> 0)", "harmful", Arm(0.95, 0.3), Arm(0.0, 0.3)),
    Scenario("neutral-quality", "neutral, noisy scores (sd 0.15) and tokens (log-sigma 0.4)", "neutral",
             Arm(0.95, 0.3, score=0.82, tokens=800), Arm(0.95, 0.3, score=0.82, tokens=800)),
    Scenario("score-82-64", "score 0.82 -> 0.64, success unchanged", "harmful",
             Arm(0.95, 0.3, score=0.82, tokens=800), Arm(0.95, 0.3, score=0.64, tokens=800)),
    Scenario("tokens-x16", "tokens x1.6, success unchanged", "harmful",
             Arm(0.95, 0.3, score=0.82, tokens=800), Arm(0.95, 0.3, score=0.82, tokens=1280)),
    Scenario("outage-after-promotion", "outage after promotion (10 failures)", "outage_after_promotion",
             Arm(0.95, 0.3), Arm(0.95, 0.3)),
    Scenario("outage-in-canary", "outage during the canary (both arms)", "outage_in_canary",
             Arm(0.95, 0.3), Arm(0.95, 0.3)),
)


# --------------------------------------------------------------------------------------
# one simulated change


def _draw(rng: random.Random, arm: Arm, failed: bool = False) -> tuple[bool, float]:
    ok = not failed and rng.random() < arm.success
    return ok, arm.median_s * math.exp(rng.gauss(0.0, arm.sigma))


def _draw_metrics(rng: random.Random, arm: Arm, rec: CallRecord) -> None:
    """Set the record's score and tokens_out (scenarios that carry them)."""
    if arm.score is not None:
        rec.score = min(1.0, max(0.0, rng.gauss(arm.score, SCORE_SD)))
    if arm.tokens is not None:
        rec.metrics = {"tokens_out": arm.tokens * math.exp(rng.gauss(0.0, TOKENS_SIGMA))}


def _stands_down(run_calls: int, run_failures: int) -> bool:
    """Whether the tripwire stands down because the baseline fails too (an outage): the
    baseline calls made since the candidate's failure run began include >= 2 failures
    and are >= 50 % failures (``sil_core.detect.tripwire.is_outage``)."""
    return run_failures >= 2 and run_failures >= STANDDOWN_FAILURE_RATE * run_calls


def outage_start(policy: RolloutPolicy) -> int:
    """Candidate calls before the canary outage: 20 calls into the last ramp step."""
    return policy.step_calls * (len(policy.ramp) - 1) + CANARY_OUTAGE_INTO_LAST_STEP


def run_sil(rng: random.Random, sc: Scenario, policy: RolloutPolicy) -> tuple[str, int, str, bool]:
    """``(outcome, candidate calls, metric, during the outage)``; outcome is ``rollback`` or
    ``promote`` (or ``hold`` when ``on_inconclusive`` says so)."""
    base, cand = Cell(), Cell()
    rec = CallRecord(id="sim", target="sim", ts=0.0, duration_s=0.0, outcome=Outcome.OK)
    trip = ConsecutiveFailures(policy.tripwire_consecutive)
    ramp, last = policy.ramp, len(policy.ramp) - 1
    step = at_step = n_c = 0
    look = -1
    run_calls = run_failures = 0  # baseline calls since the candidate's failure run began
    outage_at = outage_start(policy) if sc.kind == "outage_in_canary" else -1
    outage_left = -1  # calls of the outage (both arms fail) still to come
    failing = False
    while n_c < policy.horizon:
        if outage_left < 0 and n_c == outage_at:
            outage_left = OUTAGE_CALLS
        failing = outage_left > 0
        if failing:
            outage_left -= 1
        to_candidate = rng.random() < ramp[step]
        arm = sc.candidate if to_candidate else sc.baseline
        ok, lat = _draw(rng, arm, failing)
        rec.outcome, rec.duration_s = (Outcome.OK if ok else Outcome.ERROR), lat
        _draw_metrics(rng, arm, rec)
        if not to_candidate:
            add_record(base, rec)
            run_calls += 1
            run_failures += not ok
            continue
        add_record(cand, rec)
        n_c += 1
        at_step += 1
        if ok:
            run_calls = run_failures = 0
        if n_c <= policy.min_calls and trip.observe(ok) and not _stands_down(run_calls, run_failures):
            return "rollback", n_c, "tripwire", failing
        new_look = p95_look(cand.lat_n)
        check_p95 = new_look > look
        look = max(look, new_look)
        verdict = judge(base, cand, policy, check_p95=check_p95)
        if verdict.kind == Verdict.REGRESSED:
            return "rollback", n_c, verdict.metric or "?", failing
        if verdict.kind == Verdict.HEALTHY:
            if step == last:
                return "promote", n_c, "healthy", False
            step, at_step = step + 1, 0
        elif at_step >= policy.step_calls and step < last:
            step, at_step = step + 1, 0
    settle = {"keep": "promote", "hold": "hold", "rollback": "rollback"}[policy.on_inconclusive]
    return settle, n_c, "horizon", False


def run_seed(rng: random.Random, sc: Scenario) -> tuple[str, int, str, bool]:
    """``(outcome, after-calls, rule)``; outcome ``rollback`` or ``pending`` (never confirmed)."""
    ok_sum = lat_sum = 0.0
    for _ in range(SEED_BEFORE_CALLS):
        ok, lat = _draw(rng, sc.baseline)
        ok_sum += ok
        lat_sum += lat
    before_sr, before_avg = ok_sum / SEED_BEFORE_CALLS, lat_sum / SEED_BEFORE_CALLS
    outage = sc.kind == "outage_after_promotion"
    horizon = OUTAGE_NORMAL_CALLS + OUTAGE_CALLS if outage else SEED_HORIZON
    n = succ = run = 0
    lat_total = 0.0
    while n < horizon:
        ok, lat = _draw(rng, sc.candidate, outage and n >= OUTAGE_NORMAL_CALLS)
        n += 1
        succ += ok
        lat_total += lat
        run = 0 if ok else run + 1
        if n < SEED_GATE:
            continue
        after_sr, after_avg = succ / n, lat_total / n
        if before_sr > 0 and before_sr - after_sr > SEED_SR_DROP:
            return "rollback", n, "success_rate", outage and n > OUTAGE_NORMAL_CALLS
        if before_avg > 0 and (after_avg - before_avg) / before_avg > SEED_LAT_RISE:
            return "rollback", n, "latency", outage and n > OUTAGE_NORMAL_CALLS
        if run >= SEED_CONSECUTIVE:
            return "rollback", n, "consecutive_failures", outage and n > OUTAGE_NORMAL_CALLS
    return "pending", n, "horizon", False


def _rng(seed: int, system: str, key: str, run: int) -> random.Random:
    return random.Random(f"{seed}:{system}:{key}:{run}")


# --------------------------------------------------------------------------------------
# summaries and targets


def _pct(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    if q == 0.5 and len(ordered) % 2 == 0:
        mid = len(ordered) // 2
        return (ordered[mid - 1] + ordered[mid]) / 2
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def summarise(sc: Scenario, system: str, results: list[tuple[str, int, str, bool]]) -> dict[str, Any]:
    runs = len(results)
    rolled = [(n, m) for o, n, m, _ in results if o == "rollback" and m != "horizon"]
    calls = [n for n, _ in rolled]
    by_metric: dict[str, int] = {}
    for _, m in rolled:
        by_metric[m] = by_metric.get(m, 0) + 1
    outcomes: dict[str, int] = {}
    for o, _, m, _ in results:
        k = f"{o}:{m}" if o != "rollback" or m == "horizon" else "rollback"
        outcomes[k] = outcomes.get(k, 0) + 1
    ci = wilson(len(rolled), runs)
    summary: dict[str, Any] = {
        "runs": runs,
        "rollbacks": len(rolled),
        "rollback_rate": len(rolled) / runs if runs else None,
        "rollback_rate_ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
        "rollbacks_by_metric": dict(sorted(by_metric.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "calls_to_detect_median": _pct(calls, 0.5),
        "calls_to_detect_p95": _pct(calls, 0.95),
        "calls_to_detect_max": max(calls) if calls else None,
        "detected_within": {str(b): sum(1 for n in calls if n <= b) / runs for b in (5, 10, 30, 50, 100, 150)},
    }
    decided = [n for o, n, _, _ in results if o == "promote"]
    if system == "sil-guard":
        healthy = [n for o, n, m, _ in results if o == "promote" and m == "healthy"]
        summary["promoted"] = len(decided)
        summary["calls_to_promote_median"] = _pct(decided, 0.5)
        summary["promoted_healthy"] = len(healthy)
        summary["calls_to_healthy_median"] = _pct(healthy, 0.5)
    if sc.kind == "outage_after_promotion":
        if system == "sil-guard":
            # a promoted change is no longer judged (design §5): nothing can roll it back
            summary["eligible"] = len(decided)
            summary["outage_rollbacks"] = 0
            summary["outage_rollback_rate"] = 0.0 if decided else None
            summary["note"] = ("promoted changes are no longer judged, so the outage cannot roll them back; "
                               "rollbacks before promotion are neutral false rollbacks")
        else:
            survived = [r for r in results if not (r[0] == "rollback" and not r[3])]
            during = [r for r in survived if r[0] == "rollback"]
            summary["eligible"] = len(survived)
            summary["outage_rollbacks"] = len(during)
            summary["outage_rollback_rate"] = len(during) / len(survived) if survived else None
            summary["rolled_back_before_outage"] = runs - len(survived)
    if sc.kind == "outage_in_canary":
        window = [r for r in results if r[0] == "rollback" and r[3]]
        summary["rollbacks_during_outage"] = len(window)
        summary["rollback_during_outage_rate"] = len(window) / runs if runs else None
    return summary


TARGETS = (
    # (key, text, scenarios, check)
    ("neutral", "<= 5 % false rollbacks on every neutral scenario",
     tuple(s.key for s in SCENARIOS if s.kind == "neutral"), ("rollback_rate_max", 0.05)),
    ("success-95-80", "0.95 -> 0.80 caught in >= 95 % of runs within 150 candidate calls",
     ("success-95-80",), ("within", 150, 0.95)),
    ("latency-50-s03", "latency +50 % (sigma 0.3) caught in >= 95 % within 100 candidate calls",
     ("latency-50-s03",), ("within", 100, 0.95)),
    ("latency-50-s06", "latency +50 % (sigma 0.6) caught in >= 95 % within 100 (reported)",
     ("latency-50-s06",), ("within", 100, 0.95)),
    ("fail-100", "100 % failure caught within 5 candidate calls (>= 95 % of runs)",
     ("fail-100",), ("within", 5, 0.95)),
    ("score-82-64", "score 0.82 -> 0.64 (success unchanged) rolled back in >= 95 % of runs",
     ("score-82-64",), ("rate_min", 0.95)),
    ("tokens-x16", "tokens x1.6 (success unchanged) rolled back in >= 95 % of runs",
     ("tokens-x16",), ("rate_min", 0.95)),
    ("outage-after-promotion", "no rollback caused by an outage after promotion",
     ("outage-after-promotion",), ("outage_zero",)),
)


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, text, keys, check in TARGETS:
        row: dict[str, Any] = {"key": key, "target": text, "required": key != "latency-50-s06"}
        for system in ("sil-guard", "seed"):
            sums = [results[k][system] for k in keys]
            if check[0] == "rollback_rate_max":
                value = max(s["rollback_rate"] for s in sums)
                met = value <= check[1]
            elif check[0] == "rate_min":
                value = sums[0]["rollback_rate"]
                met = value >= check[1]
            elif check[0] == "within":
                value = sums[0]["detected_within"][str(check[1])]
                met = value >= check[2]
            else:
                value = sums[0]["outage_rollback_rate"]
                met = value == 0
            row[system] = {"value": value, "met": met}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# output


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _fmt_calls(s: dict[str, Any]) -> str:
    med, p95 = s["calls_to_detect_median"], s["calls_to_detect_p95"]
    return "-" if med is None else f"{med:g} / {p95:g}"


def render(report: dict[str, Any]) -> str:
    pol = report["policy"]
    lines = [
        f"Detection quality, {report['runs']} runs per scenario and system (seed {report['seed']}). "
        f"sil-guard policy{' (overridden: ' + json.dumps(report['policy_overrides']) + ')' if report['policy_overrides'] else ''}: "
        f"alpha {pol['alpha']:g}, min_calls {pol['min_calls']}, ramp {'/'.join(f'{100 * w:g}' for w in pol['ramp'])} % "
        f"x {pol['step_calls']} candidate calls, tolerances {pol['success_tolerance']:g} / "
        f"+{100 * pol['latency_tolerance']:g} %, horizon {pol['horizon']}, tripwire {pol['tripwire_consecutive']}. "
        "Calls to detect: candidate calls (sil-guard), after-change calls (seed), over the runs that rolled back.",
        "",
        "| scenario | truth | sil-guard rollbacks | sil-guard calls to detect (median / p95) "
        "| seed rollbacks | seed calls to detect (median / p95) |",
        "|---|---|---|---|---|---|",
    ]
    for sc in SCENARIOS:
        r = report["scenarios"][sc.key]
        sil, seed = r["sil-guard"], r["seed"]
        if sc.kind == "outage_after_promotion":
            sil_rate = f"{_fmt_rate(sil['outage_rollback_rate'])} of {sil['eligible']} promoted"
            seed_rate = f"{_fmt_rate(seed['outage_rollback_rate'])} of {seed['eligible']} pending"
            lines.append(f"| {sc.label} | neutral | {sil_rate} | - | {seed_rate} | - |")
            continue
        if sc.kind == "outage_in_canary":
            lines.append(f"| {sc.label} | neutral | {_fmt_rate(sil['rollback_during_outage_rate'])} during the outage "
                         f"({_fmt_rate(sil['rollback_rate'])} in all) | - | n/a (no canary) | - |")
            continue
        truth = "neutral" if sc.kind == "neutral" else "harmful"
        lines.append(f"| {sc.label} | {truth} | {_fmt_rate(sil['rollback_rate'])} | {_fmt_calls(sil)} "
                     f"| {_fmt_rate(seed['rollback_rate'])} | {_fmt_calls(seed)} |")
    neutral = [report["scenarios"][sc.key]["sil-guard"] for sc in SCENARIOS if sc.kind == "neutral"]
    shares = [s["promoted_healthy"] / s["runs"] for s in neutral]
    meds = [s["calls_to_healthy_median"] for s in neutral if s["calls_to_healthy_median"] is not None]
    lines += ["", f"Neutral changes under sil-guard: promoted on a healthy verdict in {100 * min(shares):.0f}-"
              f"{100 * max(shares):.0f} % of runs"
              + (f" (median {min(meds):g}-{max(meds):g} candidate calls)" if meds else "")
              + f", otherwise at the {report['policy']['horizon']}-call horizon (on_inconclusive="
              f"{report['policy']['on_inconclusive']!r})."]
    lines += ["", "| target | sil-guard | met | seed | met |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        def cell(v: dict[str, Any]) -> tuple[str, str]:
            return _fmt_rate(v["value"]), ("yes" if v["met"] else "**no**")
        sv, sm = cell(t["sil-guard"])
        dv, dm = cell(t["seed"])
        lines.append(f"| {t['target']} | {sv} | {sm} | {dv} | {dm} |")
    lines += ["", f"All required sil-guard targets met: {'yes' if report['all_targets_met'] else 'no'}."]
    m = report["machine"]
    lines.append(f"Python {m['python']}, {m['cpu_count']} CPUs, {report['workers']} worker(s); "
                 f"run took {report['duration_s']:.0f} s.")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in RolloutPolicy.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"expected key=value with a RolloutPolicy field, got {text!r}")
    raw = raw.strip()
    if key == "ramp":
        return key, tuple(float(x) for x in raw.split(",") if x)
    default = RolloutPolicy.__dataclass_fields__[key].default
    if isinstance(default, bool):
        return key, raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return key, int(raw)
    if isinstance(default, float):
        return key, float(raw)
    return key, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs per scenario (a smoke run)")
    parser.add_argument("--runs", type=int, help=f"runs per scenario and system (default {RUNS})")
    parser.add_argument("--seed", type=int, default=20240611, help="random seed of the simulation")
    parser.add_argument("--policy", action="append", default=[], type=_parse_override, metavar="KEY=VALUE",
                        help="override a RolloutPolicy field for sil-guard (repeatable; ramp=0.1,0.25,0.5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--scenarios", help="comma-separated subset of scenario keys")
    args = parser.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    overrides = dict(args.policy)
    policy = RolloutPolicy().override(**overrides)
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = tuple(s for s in SCENARIOS if s.key in wanted)

    started = time.perf_counter()
    machine = machine_info()
    chunk = max(1, math.ceil(runs / 10))
    jobs, index = [], []
    for sc in scenarios:
        for system in ("sil-guard", "seed"):
            if system == "seed" and sc.kind == "outage_in_canary":
                continue
            for lo in range(0, runs, chunk):
                n = min(chunk, runs - lo)
                jobs.append((sc, system, args.seed, n, policy.as_dict(), lo))
                index.append((sc.key, system))
    # each run's random stream depends only on (seed, system, scenario, run index)
    work = [(sc, system, seed, n, pol) for sc, system, seed, n, pol, _ in jobs]
    offsets = [lo for *_, lo in jobs]
    raw: dict[tuple[str, str], list] = {}
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            outs = list(pool.map(_simulate_at, zip(work, offsets)))
    else:
        outs = [_simulate_at(item) for item in zip(work, offsets)]
    for key, out in zip(index, outs):
        raw.setdefault(key, []).extend(out)

    results: dict[str, dict[str, Any]] = {}
    for sc in scenarios:
        entry: dict[str, Any] = {
            "label": sc.label, "kind": sc.kind,
            "baseline": {"success": sc.baseline.success, "median_s": sc.baseline.median_s, "sigma": sc.baseline.sigma,
                         "score": sc.baseline.score, "tokens": sc.baseline.tokens},
            "candidate": {"success": sc.candidate.success, "median_s": sc.candidate.median_s,
                          "sigma": sc.candidate.sigma, "score": sc.candidate.score, "tokens": sc.candidate.tokens},
        }
        for system in ("sil-guard", "seed"):
            if (sc.key, system) in raw:
                entry[system] = summarise(sc, system, raw[(sc.key, system)])
            else:
                entry[system] = None
        results[sc.key] = entry
    have_all = all(s.key in results for s in SCENARIOS)
    targets = check_targets(results) if have_all else []
    report = {
        "benchmark": "detection",
        "runs": runs,
        "seed": args.seed,
        "quick": args.quick,
        "policy": policy.as_dict(),
        "policy_overrides": {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()},
        "model": {
            "latency": "lognormal, ln(latency) ~ N(ln(median_s), sigma), median 1 s; failed calls too",
            "sil_guard": "canary mode: arms start together; judge() after every candidate call; tripwire over "
                         "the first min_calls candidate calls, standing down when the baseline calls since the "
                         "candidate's failure run began hold >= 2 failures and >= 50 % failures",
            "seed": f"switch mode: before-window {SEED_BEFORE_CALLS} baseline calls; rules checked on every call "
                    f"from after-call {SEED_GATE}; horizon {SEED_HORIZON} after-calls",
            "horizon_candidate_calls": policy.horizon,
            "canary_outage": f"{OUTAGE_CALLS} calls of both arms fail, from candidate call {outage_start(policy) + 1}",
        },
        "scenarios": results,
        "targets": targets,
        "all_targets_met": bool(targets) and all(t["sil-guard"]["met"] for t in targets if t["required"]),
        "workers": args.workers,
        "machine": machine,
        "loadavg_at_end": loadavg(),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    log(f"detection: {len(jobs)} batches, {report['duration_s']} s")
    if args.json:
        print(json.dumps(report))
    elif have_all:
        print(render(report))
    else:
        print(json.dumps(results, indent=1))
    return 0


def _simulate_at(item: tuple[tuple, int]) -> list[tuple[str, int, str, bool]]:
    (sc, system, seed, runs, pol), offset = item
    policy = RolloutPolicy.from_dict(pol)
    out = []
    for i in range(offset, offset + runs):
        rng = _rng(seed, system, sc.key, i)
        out.append(run_sil(rng, sc, policy) if system == "sil-guard" else run_seed(rng, sc))
    return out


if __name__ == "__main__":
    sys.exit(main())
