"""The core honours a strategy's policy: each field changes what the guard does, the config
gets only config keys, and the hexagram goes to the trail."""

from __future__ import annotations

import time

import pytest

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, State, StrategyDecision, YijingEvolutionStrategy
from sil_core.aggregates import merge
from sil_core.strategies import run_strategy

from .test_yijing import history

PATCH = {"retry_limit": 1}


class Fixed:
    """A strategy that always decides the same thing."""

    def __init__(self, decision: StrategyDecision) -> None:
        self.decision = decision

    def analyze_with_policy(self, agent_id, traces, before_metrics=None):
        assert 0 < len(traces) <= 200
        return self.decision

    def analyze(self, agent_id, traces, before_metrics=None):
        raise AssertionError("analyze_with_policy is preferred")


def guard(strategy, **kw) -> Guard:
    g = Guard("memory://", adapter=DictConfigAdapter({"writer": {"prompt": "good"}}), strategy=strategy,
              flush_interval=60, refresh_interval=0, strategy_inline=True, **kw)
    g.thresholds.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0, cooldown_hours=0)
    return g


def fail_once(g: Guard) -> None:
    g.record("writer", success=False, latency_s=0.1, error_type="RateLimitError")
    g.flush()


def decisions(g: Guard) -> list[dict]:
    return [e["data"] for e in g.trail("writer") if e["type"] == "strategy_decision"]


def run(decision: StrategyDecision, **kw):
    with guard(Fixed(decision), **kw) as g:
        fail_once(g)
        return g.change("writer"), decisions(g)


def test_auto_apply_false_waits_for_approval():
    held, events = run(StrategyDecision(PATCH, auto_apply=False))
    applied, _ = run(StrategyDecision(PATCH))
    assert held.state == State.PROPOSED and events[-1]["action"] == "awaiting_approval"
    assert applied.state in (State.CANARY, State.SWITCHED)
    with guard(Fixed(StrategyDecision(PATCH, auto_apply=False))) as g:
        fail_once(g)
        assert g.approve("writer").state in (State.CANARY, State.SWITCHED)


def test_canary_ratio_sets_the_first_ramp_step():
    ten, _ = run(StrategyDecision(PATCH, canary_ratio=0.10))
    default, _ = run(StrategyDecision(PATCH))
    assert (ten.weight, ten.policy["ramp"]) == (0.10, [0.10, 0.25, 0.5])
    assert (default.weight, default.policy["ramp"]) == (0.05, [0.05, 0.1, 0.25, 0.5])
    zero, events = run(StrategyDecision(PATCH, canary_ratio=0.0))  # nothing exposed before a person approves
    assert zero.state == State.PROPOSED and events[-1]["action"] == "awaiting_approval"
    huge, _ = run(StrategyDecision(PATCH, canary_ratio=5.0))  # bounded by the policy's last step
    assert huge.policy["ramp"] == [0.5]


def test_rollback_bias_tightens_the_tolerances():
    biased, _ = run(StrategyDecision(PATCH, rollback_bias=True))
    plain, _ = run(StrategyDecision(PATCH))
    assert (plain.policy["success_tolerance"], plain.policy["latency_tolerance"]) == (0.02, 0.20)
    assert (biased.policy["success_tolerance"], biased.policy["latency_tolerance"]) == pytest.approx((0.01, 0.10))


def test_rollback_bias_changes_the_verdict_on_the_same_calls():
    """The candidate fails 1.5 % of calls, evenly spread, against a perfect baseline: within
    the default 2-point tolerance (the canary goes on), beyond the halved one (rolled back)."""
    states = {}
    for bias in (False, True):
        policy = RolloutPolicy(min_calls=20, horizon=100_000, step_calls=100_000)
        with guard(Fixed(StrategyDecision(PATCH, rollback_bias=bias)), policy=policy) as g:
            fail_once(g)
            g.thresholds.set_manual_threshold("writer", failure_threshold=10_000)
            change = g.change("writer")
            for i in range(4000):
                g.record("writer", success=True, latency_s=0.1, version=change.baseline_version, arm="baseline")
                g.record("writer", success=i % 67 != 0, latency_s=0.1, version=change.candidate_version, arm="candidate")
            g.flush()
            g.evaluate("writer")
            states[bias] = g.change("writer").state
    assert states == {False: State.CANARY, True: State.ROLLED_BACK}


def test_rollback_recent_change_rolls_back_the_change_in_flight():
    cases = ((True, State.ROLLED_BACK, "rolled_back"), (False, State.CANARY, "change_in_flight"))
    for flag, expected_state, action in cases:
        with guard(Fixed(StrategyDecision(PATCH, rollback_recent_change=flag, reason="degradation"))) as g:
            g.thresholds.set_manual_threshold("writer", failure_threshold=10_000)
            first = g.propose("writer", {"prompt": "risky"})
            g.thresholds.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0, cooldown_hours=0)
            fail_once(g)
            change = g.change("writer")
            assert (change.id, change.state) == (first.id, expected_state)
            assert decisions(g)[-1]["action"] == action
    with guard(Fixed(StrategyDecision(PATCH, rollback_recent_change=True))) as g:
        fail_once(g)  # nothing in flight: nothing is proposed either
        assert g.change("writer") is None and decisions(g)[-1]["action"] == "nothing_to_roll_back"


def test_the_config_gets_only_config_keys_and_the_trail_the_metadata():
    meta = {"hexagram": {"name": "kan"}, "dimensions": [1, 2]}
    with guard(Fixed(StrategyDecision(PATCH, metadata=meta)), mode="switch") as g:
        fail_once(g)
        assert g.adapter.get_config("writer") == {"prompt": "good", "retry_limit": 1}
        proposed = [e["data"] for e in g.trail("writer") if e["type"] == "change_proposed"]
        assert proposed[-1]["patch"] == PATCH and proposed[-1]["metadata"] == meta
        assert decisions(g)[-1]["hexagram"] == {"name": "kan"} and decisions(g)[-1]["action"] == State.SWITCHED


def test_a_broken_policy_strategy_never_loses_the_callers_result():
    class Broken:
        def analyze_with_policy(self, agent_id, traces, before_metrics=None):
            raise ValueError("strategy bug")

    with guard(Broken()) as g:
        @g.track("writer")
        def work():
            raise RuntimeError("agent failure")

        with pytest.raises(RuntimeError, match="agent failure"):
            work()
        g.flush()
        assert any(e["type"] == "strategy_error" for e in g.trail("writer")) and g.change("writer") is None


# -- the Yijing strategy end to end ------------------------------------------------------
def yijing_run(bits: str, *, in_flight: bool = False, mode: str = "canary"):
    """Record the history of state ``bits`` and let the guard ask the Yijing strategy."""
    with guard(YijingEvolutionStrategy(latency_target_sec=5.0), mode=mode) as g:
        g.thresholds.set_manual_threshold("writer", failure_threshold=10_000)
        first = g.propose("writer", {"prompt": "risky"}) if in_flight else None
        start = time.time() - 200
        for i, call in enumerate(history(bits)):
            context = dict(call["context"])
            if call.get("error_category"):
                context["error_category"] = call["error_category"]
            g.record("writer", success=call["success"], latency_s=call["duration_sec"], error_type=call["error_type"],
                     error_message=call["error"], context=context, ts=start + i)
        g.flush()
        run_strategy(g, "writer", merge(g.store.cells("writer", hist=False).values()), since=0.0)
        return g.change("writer"), decisions(g), first, g.adapter.get_config("writer")


def test_yijing_kan_is_rolled_out_as_a_bounded_canary():
    change, events, _, _ = yijing_run("010010")
    assert change.state in (State.CANARY, State.SWITCHED)
    assert change.patch == {"max_tool_fanout": 1, "context_budget_multiplier": 0.75, "retry_limit": 1}
    assert events[-1]["hexagram"]["name"] == "kan" and len(events[-1]["dimensions"]) == 6


def test_yijing_kun_waits_for_a_person():
    change, events, _, config = yijing_run("000000", mode="switch")
    assert change.state == State.PROPOSED and change.patch == {"max_tool_fanout": 1}
    assert config == {"prompt": "good"} and events[-1]["action"] == "awaiting_approval"


def test_yijing_bo_rolls_back_the_change_in_flight():
    change, events, first, _ = yijing_run("000001", in_flight=True)
    assert change.id == first.id and change.state == State.ROLLED_BACK and events[-1]["action"] == "rolled_back"


def test_yijing_derived_state_uses_its_trigram_policy():
    # lines 1-3 strong (lower qian), governance weak: retry_limit, canary at 10 %, applied
    change, events, _, _ = yijing_run("111110")
    assert change.state in (State.CANARY, State.SWITCHED) and change.weight == 0.10 and change.patch == {"retry_limit": 1}
    assert events[-1]["hexagram"]["name"] == "guai" and events[-1]["hexagram"]["number"] == 43


def test_yijing_qian_proposes_nothing():
    change, events, _, _ = yijing_run("111111")
    assert change is None and events[-1]["action"] == "no_config_change"


def test_the_seed_api_applies_only_config_keys(tmp_path):
    """Through ``SelfImprovingLoop`` (switch mode): the seed wrote ``hexagram``, ``dimensions``
    and ``reason`` into the agent's config; now only config keys arrive there."""
    from sil_core import SelfImprovingLoop

    adapter = DictConfigAdapter({"writer": {"prompt": "good"}})
    loop = SelfImprovingLoop(data_dir=str(tmp_path), storage="sqlite", config_adapter=adapter,
                             strategy=YijingEvolutionStrategy(latency_target_sec=5.0))
    try:
        loop.adaptive_threshold.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0)

        def rate_limited():
            raise RuntimeError("429 Too Many Requests")

        r = loop.execute_with_improvement("writer", "summarise", rate_limited)
        assert r["success"] is False and r["improvement_applied"] == 1
        # one failed call: stability and governance weak -> #28 Da Guo (xun under dui)
        assert adapter.configs["writer"] == {"prompt": "good", "max_tool_fanout": 1, "retry_limit": 1}
        event = next(e for e in loop.guard.trail("writer") if e["type"] == "strategy_decision")
        assert (event["data"]["hexagram"]["number"], event["data"]["hexagram"]["name"]) == (28, "da_guo")
    finally:
        loop.close()


def test_the_seed_api_does_not_report_a_change_waiting_for_approval(tmp_path):
    from sil_core import SelfImprovingLoop

    adapter = DictConfigAdapter({"writer": {"prompt": "good"}})
    loop = SelfImprovingLoop(data_dir=str(tmp_path), storage="sqlite", config_adapter=adapter,
                             strategy=Fixed(StrategyDecision(PATCH, auto_apply=False)))
    try:
        loop.adaptive_threshold.set_manual_threshold("writer", failure_threshold=1, min_failure_rate=0.0)

        def fails():
            raise RuntimeError("boom")

        r = loop.execute_with_improvement("writer", "summarise", fails)
        assert r["success"] is False and r["improvement_applied"] == 0
        assert loop.guard.change("writer").state == State.PROPOSED
        assert adapter.configs["writer"] == {"prompt": "good"}  # nothing applied before approval
    finally:
        loop.close()
