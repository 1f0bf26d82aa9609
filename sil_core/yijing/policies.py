"""The policy of each hexagram: a small config patch plus how the core should roll it out.

The seed's eight core states keep their policies verbatim. Every other state (at least one
weak line) gets a policy by this rule:

- config: each yin line adds its fix from :data:`LINE_FIXES` (values fixed, so bounded);
- ``canary_ratio``: 0.10 when the lower trigram is qian (the runtime lines are all strong,
  the trouble is outside), else 0.05;
- ``auto_apply_enabled``: ``False`` when either trigram is kun (three weak lines on one
  side: a person approves), else ``True``;
- ``rollback_bias``: ``True`` when line 1 (stability) is yin.

Policy keys (:data:`POLICY_KEYS`) are read by the core (``sil_core.strategies``);
``policy_action`` and ``reason`` are explanation; only :data:`CONFIG_KEYS` reach the config.
"""

from __future__ import annotations

from typing import Any

from .hexagram import CORE_HEXAGRAMS, HEXAGRAMS, HexagramState

__all__ = ("CONFIG_KEYS", "CORE_POLICIES", "LINE_FIXES", "POLICY_KEYS", "policy_for_hexagram", "split_policy")

CORE_POLICIES: dict[str, dict[str, Any]] = {
    "qian": {"policy_action": "canary_explore", "canary_ratio": 0.10,
             "reason": "all six dimensions are strong; prefer small exploration, not broad mutation"},
    "kun": {"policy_action": "conserve_and_rollback_bias", "canary_ratio": 0.0, "max_tool_fanout": 1,
            "auto_apply_enabled": False,
            "reason": "all six dimensions are weak; stop expansion and prefer rollback/recovery"},
    "zhen": {"policy_action": "fast_recover", "fallback_enabled": True, "max_tool_fanout": 1,
             "timeout_multiplier": 1.25, "reason": "sudden disturbance; isolate, reduce fanout, and switch fallback paths"},
    "kan": {"policy_action": "reduce_complexity", "max_tool_fanout": 1, "context_budget_multiplier": 0.75,
            "retry_limit": 1, "reason": "repeated risk state; simplify execution before retrying"},
    "bo": {"policy_action": "rollback_recent_change", "rollback_bias": True, "auto_apply_enabled": False,
           "reason": "degradation state; prefer reverting the latest risky change"},
    "fu": {"policy_action": "gradual_restore", "canary_ratio": 0.10, "restore_step": "small",
           "reason": "recovery signal; restore capability gradually"},
    "jiji": {"policy_action": "solidify", "promote_candidate": True, "canary_ratio": 0.0,
             "reason": "stable resolved state; preserve and document the working config"},
    "weiji": {"policy_action": "continue_canary", "canary_ratio": 0.05, "auto_apply_enabled": False,
              "reason": "not yet settled; continue canary and avoid full rollout"},
}
# line position -> the config fix applied when that line is yin (non-core states)
LINE_FIXES: dict[int, dict[str, Any]] = {
    1: {"max_tool_fanout": 1},               # stability: fewer moving parts per call
    2: {"timeout_multiplier": 1.25},         # efficiency: slow calls get a bounded extra budget
    3: {"retry_limit": 1},                   # learning: a failure run; stop retrying into it
    4: {"fallback_enabled": True},           # routing: fall back to the known-good route
    5: {"context_budget_multiplier": 0.75},  # collaboration: smaller hand-offs / context
    6: {"retry_limit": 1},                   # governance: do not retry into rate limits/quota
}
POLICY_KEYS = ("auto_apply_enabled", "canary_ratio", "rollback_bias", "promote_candidate")
CONFIG_KEYS = ("max_tool_fanout", "fallback_enabled", "timeout_multiplier", "context_budget_multiplier",
               "retry_limit", "restore_step")


def _derived(binary: str) -> dict[str, Any]:
    h = HEXAGRAMS[binary]
    weak = [i + 1 for i, bit in enumerate(binary) if bit == "0"]
    policy: dict[str, Any] = {"policy_action": f"bounded_{h.lower}_under_{h.upper}"}
    for position in weak:
        policy.update(LINE_FIXES[position])
    policy["canary_ratio"] = 0.10 if h.lower == "qian" else 0.05
    policy["auto_apply_enabled"] = "kun" not in (h.lower, h.upper)
    if 1 in weak:
        policy["rollback_bias"] = True
    policy["reason"] = (f"{h.display_name} (#{h.number}): {h.lower} under {h.upper}, weak lines {weak}; "
                        "patch the weak lines only, in a small canary")
    return policy


def policy_for_hexagram(state: HexagramState) -> dict[str, Any]:
    """The state's policy (config keys, policy keys, ``policy_action``, ``reason``) plus ``hexagram``."""
    core = CORE_HEXAGRAMS.get(state.binary)
    policy = dict(CORE_POLICIES[core]) if core else _derived(state.binary)
    policy["hexagram"] = state.as_dict()
    return policy


def split_policy(policy: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config patch, rollout policy)``: the config keys and the policy keys of a policy."""
    return ({k: v for k, v in policy.items() if k in CONFIG_KEYS},
            {k: v for k, v in policy.items() if k in POLICY_KEYS})
