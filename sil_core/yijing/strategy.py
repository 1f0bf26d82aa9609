"""``YijingEvolutionStrategy``: traces -> six lines -> hexagram -> bounded policy patch."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..strategies import StrategyDecision
from .hexagram import HexagramState, identify_hexagram
from .lines import LineSignal, score_lines
from .policies import policy_for_hexagram, split_policy

__all__ = ("YijingEvolutionStrategy",)


def _dimensions(lines: Sequence[LineSignal]) -> list[dict[str, Any]]:
    return [{"position": l.position, "dimension": l.dimension, "score": round(l.score, 3), "state": l.state,
             "moving": l.moving, "evidence": l.evidence} for l in lines]


class YijingEvolutionStrategy:
    """A deterministic state router for agent reliability (not a judgment engine).

    Use it as ``Guard(strategy=...)`` or ``SelfImprovingLoop(strategy=...)``: the guard calls
    :meth:`analyze_with_policy` and honours the hexagram's policy; :meth:`analyze` returns
    only the config keys (the seed returned its metadata in the patch too).
    """

    def __init__(self, *, latency_target_sec: float = 5.0) -> None:
        if not latency_target_sec > 0:
            raise ValueError("latency_target_sec must be > 0")
        self.latency_target_sec = latency_target_sec

    def read(self, traces: Sequence[Mapping], before_metrics: Mapping | None = None
             ) -> tuple[list[LineSignal], HexagramState, dict[str, Any]]:
        """The window's six lines, its hexagram state and that state's policy."""
        lines = score_lines(traces, before_metrics, latency_target_sec=self.latency_target_sec)
        state = identify_hexagram(lines)
        return lines, state, policy_for_hexagram(state)

    def describe(self, agent_id: str, traces: Sequence[Mapping], before_metrics: Mapping | None = None) -> dict:
        """The seed's full report: policy, ``hexagram`` and ``dimensions`` (for people and the trail)."""
        lines, _, policy = self.read(traces, before_metrics)
        return {"strategy_source": "yijing_hexagram_state_machine", "agent_id": agent_id, **policy,
                "dimensions": _dimensions(lines)}

    def analyze_with_policy(self, agent_id: str, traces: Sequence[Mapping],
                            before_metrics: Mapping | None = None) -> StrategyDecision:
        """The config patch and the rollout policy the guard honours."""
        lines, state, policy = self.read(traces, before_metrics)
        patch, rollout = split_policy(policy)
        return StrategyDecision(
            patch=patch,
            auto_apply=bool(rollout.get("auto_apply_enabled", True)),
            canary_ratio=rollout.get("canary_ratio"),
            rollback_bias=bool(rollout.get("rollback_bias", False)),
            rollback_recent_change=policy["policy_action"] == "rollback_recent_change",
            reason=policy["reason"],
            metadata={"strategy_source": "yijing_hexagram_state_machine", "policy_action": policy["policy_action"],
                      "promote_candidate": bool(rollout.get("promote_candidate", False)),
                      "hexagram": state.as_dict(), "dimensions": _dimensions(lines)},
        )

    def analyze(self, agent_id: str, traces: Sequence[Mapping], before_metrics: Mapping | None = None) -> dict | None:
        """The config keys of the state's policy, or ``None`` when it changes no config."""
        return self.analyze_with_policy(agent_id, traces, before_metrics).patch or None
