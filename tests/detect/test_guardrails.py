"""Guardrails on numeric metrics: each direction, relative and absolute, the defaults, the
alpha split, a metric the candidate stops reporting, and a change judged end to end."""

import random

import pytest

from sil_core import ConfigError, Guard, RolloutPolicy
from sil_core.aggregates import Cell, add_record
from sil_core.detect.detector import judge
from sil_core.detect.verdict import Verdict
from sil_core import Guardrail
from sil_core.records import CallRecord, Outcome

POLICY = RolloutPolicy(min_calls=30)


def arm(n, rng, *, success=0.95, score=None, tokens=None, metric=None):
    """A cell of ``n`` calls with the given metric distributions."""
    cell = Cell()
    for i in range(n):
        rec = CallRecord(f"c{i}", "t", 0.0, 0.5 * rng.lognormvariate(0, 0.3),
                         Outcome.OK if rng.random() < success else Outcome.ERROR)
        if score is not None:
            rec.score = min(1.0, max(0.0, rng.gauss(score, 0.15)))
        metrics = {}
        if tokens is not None:
            metrics["tokens_out"] = rng.lognormvariate(tokens, 0.4)
        if metric is not None:
            metrics["accuracy"] = rng.gauss(metric, 0.1)
        rec.metrics = metrics or None
        add_record(cell, rec)
    return cell


def test_a_lower_score_is_a_regression_named_in_the_verdict():
    rng = random.Random(1)
    v = judge(arm(400, rng, score=0.82), arm(120, rng, score=0.64), POLICY)
    assert v.kind == Verdict.REGRESSED and v.metric == "score"
    ev = v.evidence["metrics"]["score"]
    assert ev["baseline"] == pytest.approx(0.82, abs=0.03) and ev["candidate"] == pytest.approx(0.64, abs=0.04)
    assert ev["upper"] < 0 and ev["tolerance"] == 0.05 and ev["better"] == "higher"
    assert "score got worse" in v.reason


def test_more_tokens_is_a_regression_on_the_relative_guardrail():
    rng = random.Random(2)
    v = judge(arm(400, rng, tokens=6.0), arm(120, rng, tokens=6.47), POLICY)
    assert v.kind == Verdict.REGRESSED and v.metric == "tokens_out"
    ev = v.evidence["metrics"]["tokens_out"]
    assert ev["ratio"] == pytest.approx(1.6, rel=0.12) and ev["ratio_lower"] > 1.0 and ev["relative"] is True


def test_fewer_tokens_and_a_higher_score_are_not_regressions():
    rng = random.Random(3)
    v = judge(arm(400, rng, success=1.0, score=0.7, tokens=6.5), arm(200, rng, success=1.0, score=0.85, tokens=6.0),
              POLICY)
    assert v.kind == Verdict.HEALTHY
    assert "score" in v.reason and "tokens_out" in v.reason


def test_within_tolerance_is_not_a_regression():
    rng = random.Random(4)
    # tokens +10 % (tolerance +20 %), score -0.02 (tolerance 0.05): healthy once shown
    v = judge(arm(2000, rng, success=1.0, score=0.82, tokens=6.0), arm(2000, rng, success=1.0, score=0.80, tokens=6.095),
              POLICY)
    assert v.kind == Verdict.HEALTHY


@pytest.mark.parametrize("better,shift,regressed", [
    ("higher", -0.3, True), ("higher", +0.3, False), ("lower", +0.3, True), ("lower", -0.3, False)])
def test_a_custom_absolute_guardrail_in_each_direction(better, shift, regressed):
    rng = random.Random(5)
    policy = RolloutPolicy(min_calls=30, metrics={"accuracy": Guardrail(better, 0.05)})
    v = judge(arm(300, rng, metric=0.5), arm(150, rng, metric=0.5 + shift), policy)
    assert (v.kind == Verdict.REGRESSED and v.metric == "accuracy") is regressed


def test_a_relative_guardrail_where_higher_is_better():
    rng = random.Random(6)
    policy = RolloutPolicy(min_calls=30, metrics={"accuracy": Guardrail("higher", 0.10, relative=True)})
    v = judge(arm(300, rng, metric=1.0), arm(150, rng, metric=0.7), policy)
    assert v.kind == Verdict.REGRESSED and v.metric == "accuracy"
    assert v.evidence["metrics"]["accuracy"]["ratio"] == pytest.approx(0.7, rel=0.05)


def test_a_guardrail_turned_off_is_not_judged_and_takes_no_alpha():
    rng = random.Random(7)
    base, cand = arm(400, rng, score=0.82), arm(120, rng, score=0.5)
    off = RolloutPolicy(min_calls=30, metrics={"score": None})
    v = judge(base, cand, off)
    assert v.kind != Verdict.REGRESSED and "metrics" not in v.evidence
    assert v.evidence["metrics_judged"] == 3
    on = judge(base, cand, POLICY)
    assert on.evidence["metrics_judged"] == 4
    assert on.evidence["alpha_per_metric"] == pytest.approx(POLICY.alpha / 4)


def test_a_metric_the_candidate_stops_reporting_is_flagged_and_blocks_an_early_promotion():
    rng = random.Random(8)
    v = judge(arm(400, rng, tokens=6.0), arm(200, rng), POLICY)
    assert v.kind == Verdict.INCONCLUSIVE
    assert v.evidence["missing_metrics"] == ["tokens_out"] and "reports no tokens_out" in v.reason


def test_a_metric_on_some_calls_is_judged_on_those_calls():
    rng = random.Random(9)
    base, cand = arm(400, rng, score=0.82), Cell()
    for i in range(300):
        rec = CallRecord(f"c{i}", "t", 0.0, 0.5, Outcome.OK)
        if i % 3 == 0:  # one call in three is scored
            rec.score = min(1.0, max(0.0, rng.gauss(0.6, 0.15)))
        add_record(cand, rec)
    v = judge(base, cand, POLICY)
    assert v.kind == Verdict.REGRESSED and v.evidence["metrics"]["score"]["n"]["candidate"] == 100


def test_bad_guardrails_are_refused():
    with pytest.raises(ConfigError, match="better"):
        Guardrail("up", 0.1)
    with pytest.raises(ConfigError, match="tolerance"):
        Guardrail("lower", -1)
    with pytest.raises(ConfigError, match="unknown keys"):
        RolloutPolicy(metrics={"x": {"better": "lower", "tol": 1}})
    p = RolloutPolicy(metrics={"x": {"better": "lower", "tolerance": 0.1, "relative": True}, "score": None})
    assert RolloutPolicy.from_dict(p.as_dict()) == p


def test_a_change_that_doubles_tokens_is_rolled_back_end_to_end():
    from sil_core import DictConfigAdapter

    rng = random.Random(10)
    g = Guard("memory://", policy=RolloutPolicy(min_calls=30), flush_interval=0.01, refresh_interval=0.01)
    adapter = DictConfigAdapter({"agent": {"prompt": "v1"}})
    for i in range(200):
        with g.call("agent") as c:
            c.metrics["tokens_in"] = rng.lognormvariate(6.0, 0.4)
    g.propose("agent", {"prompt": "v2"}, adapter=adapter, mode="canary")
    truth = {"baseline": [], "candidate": []}
    for i in range(4000):
        with g.call("agent", key=i) as c:
            value = rng.lognormvariate(6.0 + (0.69 if c.arm == "candidate" else 0.0), 0.4)
            c.metrics["tokens_in"] = value
            truth[c.arm].append(value)
        if i % 25 == 0:
            g.flush()
            g.evaluate("agent")
            if g.change("agent").state not in ("canary", "switched"):
                break
    change = g.change("agent")
    assert change.state == "rolled_back" and change.verdict.metric == "tokens_in"
    assert adapter.configs["agent"] == {"prompt": "v1"}
    stats = g.stats("agent", version=change.candidate_version)
    assert stats.metrics["tokens_in"].n == len(truth["candidate"])
    assert stats.metrics["tokens_in"].mean == pytest.approx(sum(truth["candidate"]) / len(truth["candidate"]))
    g.close()


def test_every_metric_that_got_worse_is_in_the_evidence():
    rng = random.Random(11)
    v = judge(arm(400, rng, score=0.82, tokens=6.0), arm(150, rng, score=0.6, tokens=6.6), POLICY)
    assert v.kind == Verdict.REGRESSED and v.metric == "score"
    assert set(v.evidence["metrics"]) == {"score", "tokens_out"} and "also worse: tokens_out" in v.reason


def test_a_change_judges_metrics_on_its_own_calls_only():
    """An arm's earlier calls (a re-proposed patch, a version served before) are not this
    change's evidence: metrics start from zero with the change, like success."""
    from sil_core import DictConfigAdapter

    g = Guard("memory://", policy=RolloutPolicy(min_calls=30), flush_interval=0.01, refresh_interval=0.01)
    adapter = DictConfigAdapter({"agent": {"prompt": "v1"}})
    for attempt in range(2):
        g.propose("agent", {"prompt": "v2"}, adapter=adapter, mode="canary")
        for i in range(20):
            with g.call("agent", key=f"{attempt}-{i}") as c:
                c.metrics["tokens_out"] = 100.0
                c.score = 0.5
        g.flush()
        arms = g.arms("agent").values()
        assert sum(a.n for a in arms) == 20
        assert sum(a.metrics["tokens_out"].n for a in arms if "tokens_out" in a.metrics) == 20
        assert g.rollback("agent", cooldown=False) is True
    g.close()


def test_a_switch_mode_change_is_judged_on_metrics_against_its_frozen_baseline():
    """A switch has no live baseline: the frozen window must keep the metrics too (a skill edit
    that triples cost is rolled back, not promoted at the horizon)."""
    from sil_core import DictConfigAdapter

    rng = random.Random(12)
    g = Guard("memory://", policy=RolloutPolicy(min_calls=30), flush_interval=0.01, refresh_interval=0.01)
    adapter = DictConfigAdapter({"skill": {"v": 1}})
    for _ in range(60):
        with g.call("skill") as c:
            c.metrics["cost_usd"] = rng.lognormvariate(-7, 0.3)
    g.flush()
    g.propose("skill", {"v": 2}, adapter=adapter, mode="switch")
    for i in range(300):
        with g.call("skill") as c:
            c.metrics["cost_usd"] = 3 * rng.lognormvariate(-7, 0.3)
        if i % 10 == 9:
            g.flush()
            g.evaluate("skill")
            if not g.change("skill").in_flight:
                break
    change = g.change("skill")
    assert change.state == "rolled_back" and change.verdict.metric == "cost_usd"
    assert change.verdict.evidence["metrics"]["cost_usd"]["ratio"] == pytest.approx(3, rel=0.15)
    g.close()


def test_metric_values_must_be_numbers_and_guardrails_name_recordable_metrics():
    g = Guard("memory://")
    with g.call("t") as c:
        c.metrics.update({"as_text": "12", "ok": 3, "nan": float("nan"), "bad name": 1.0, "x" * 65: 1.0})
    assert set(g.stats("t").metrics) == {"ok"}
    g.close()
    with pytest.raises(ConfigError, match="can never be recorded"):
        RolloutPolicy(metrics={"bad name": Guardrail("lower", 0.1)})
