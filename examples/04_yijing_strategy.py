"""The Yijing strategy: a window of calls becomes six lines, the lines a hexagram, the
hexagram a bounded config patch, and the patch is rolled out under guard (canary).

The agent retries into a provider's rate limit. Failures carry an explicit category
(``context["error_category"]``) or are classified from their error text on word boundaries.

Run: python examples/04_yijing_strategy.py
"""

import random

from sil_core import DictConfigAdapter, Guard, RolloutPolicy, YijingEvolutionStrategy


class RateLimitError(RuntimeError):
    """The provider's 429."""


rng = random.Random(7)
adapter = DictConfigAdapter({"researcher": {"retry_limit": 3, "max_tool_fanout": 4, "prompt": "Cite sources."}})
guard = Guard("memory://", adapter=adapter, strategy=YijingEvolutionStrategy(latency_target_sec=2.0),
              strategy_inline=True, policy=RolloutPolicy(min_calls=30, step_calls=40, horizon=600),
              flush_interval=0.05, refresh_interval=0.05)
guard.thresholds.set_manual_threshold("researcher", failure_threshold=6, min_failure_rate=0.05)


def researcher(user: str) -> str:
    with guard.call("researcher", key=user, context={}) as call:
        # this call's arm during a canary; the active config otherwise
        config = call.config or adapter.get_config("researcher")
        # every retry spends quota: with 3 retries, ~12 % of calls end in the provider's 429
        if rng.random() < 0.04 * config["retry_limit"]:
            raise RateLimitError("429 Too Many Requests")
        if rng.random() < 0.02:
            call.context["error_category"] = "dependency"  # an explicit category from the agent
            raise RuntimeError("search backend failed")
        return "answer"


def run(calls: int, offset: int) -> None:
    for i in range(calls):
        try:
            researcher(f"user-{(offset + i) % 400}")
        except RuntimeError:
            pass
        guard.flush()
        change = guard.change("researcher")
        if change is not None and not change.serving and change.state != "proposed":
            return


run(400, 0)  # failures cross the threshold: the strategy reads the window and proposes
decision = next(e["data"] for e in guard.trail("researcher") if e["type"] == "strategy_decision")
print("six lines (bottom to top):")
for line in reversed(decision["dimensions"]):
    mark = "━━━━━━━" if line["state"] == "yang" else "━━   ━━"
    print(f"  {mark}  {line['dimension']:<18} {line['score']:.2f}  {line['evidence']}")
h = decision["hexagram"]
print(f"hexagram #{h['number']} {h['display_name']} ({h['lower']} under {h['upper']}), "
      f"moving lines {h['moving_lines']} -> #{h['changed_number']} {h['changed_display_name']}")
print(f"policy: {decision['policy_action']}, {decision['policy']}")
print(f"patch (config keys only): {decision['patch']} -> {decision['action']}")

change = guard.change("researcher")
print(f"canary of {change.candidate_version} starts at weight {change.weight:.0%} (ramp {change.policy['ramp']})")
run(3000, 400)
guard.drain()
change = guard.change("researcher")
print(f"change {change.state}: {change.verdict.reason if change.verdict else change.reason}")
print("config now:", adapter.configs["researcher"])
print("trail:", ", ".join(e["type"] for e in guard.trail("researcher")), "| verified:", guard.verify_trail().ok)
guard.close()
