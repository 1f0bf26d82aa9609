"""Strategies: who proposes a config patch when a target keeps failing.

A strategy is any object with the seed's ``analyze(agent_id=, traces=, before_metrics=)``
returning a patch dict or ``None``, and optionally ``on_verdict(change, verdict)``, told
how each change it proposed ended (so it can stop proposing what was rolled back). The
guard calls it off the caller's thread with a bounded window of recent calls (at most
``MAX_TRACES``), never the whole history (seed bug D7).

A strategy that also wants a say in *how* its patch is rolled out defines
``analyze_with_policy(...)`` (same arguments) returning a :class:`StrategyDecision`; the
guard then prefers it to ``analyze``, asks it even while a change is in flight (so it can
roll that change back), honours its policy fields and writes its ``metadata`` to the trail
(``strategy_decision`` and ``change_proposed``), never to the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._internal.failopen import report
from .aggregates import Cell
from .policy import RolloutPolicy
from .records import CallRecord
from .rollout import Change, State
from .trail import append_event

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("MAX_TRACES", "ROLLBACK_BIAS", "Strategy", "StrategyDecision", "rollout_policy", "trace_dict")

MAX_TRACES = 200
ROLLBACK_BIAS = 0.5  # rollback_bias: success and latency tolerances are halved


@runtime_checkable
class Strategy(Protocol):
    def analyze(self, agent_id: str, traces: list[dict], before_metrics: dict | None = None) -> dict | None: ...


@dataclass(frozen=True)
class StrategyDecision:
    """A config patch (config keys only) and how the core should roll it out.

    ``auto_apply=False`` leaves the change ``proposed`` until ``guard.approve``;
    ``canary_ratio`` is the first ramp weight in canary mode (0: nothing is exposed before
    approval; switch mode has no ramp);
    ``rollback_bias`` halves the tolerances; ``rollback_recent_change`` rolls the change
    in flight back instead of proposing. ``metadata`` goes to the trail only.
    """

    patch: dict[str, Any] = field(default_factory=dict)
    auto_apply: bool = True
    canary_ratio: float | None = None
    rollback_bias: bool = False
    rollback_recent_change: bool = False
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def policy_fields(self) -> dict[str, Any]:
        return {"auto_apply": self.auto_apply, "canary_ratio": self.canary_ratio,
                "rollback_bias": self.rollback_bias, "rollback_recent_change": self.rollback_recent_change}


def rollout_policy(base: RolloutPolicy, decision: StrategyDecision) -> RolloutPolicy:
    """``base`` with the decision's first ramp step and tolerances (bounded)."""
    changes: dict[str, Any] = {}
    if decision.canary_ratio is not None and decision.canary_ratio > 0:
        first = min(max(float(decision.canary_ratio), 0.01), base.ramp[-1])
        changes["ramp"] = (first, *(w for w in base.ramp if w > first))
    if decision.rollback_bias:
        changes["success_tolerance"] = base.success_tolerance * ROLLBACK_BIAS
        changes["latency_tolerance"] = base.latency_tolerance * ROLLBACK_BIAS
    return base.override(**changes) if changes else base


def trace_dict(r: CallRecord) -> dict[str, Any]:
    """A call record in the seed's trace shape (plus sil-guard's extra fields)."""
    context = r.context_value()
    return {
        "agent_id": r.target, "task": context.get("task", "") if isinstance(context, dict) else "",
        "success": bool(r.success), "duration_sec": r.duration_s,
        "error": r.error_message or (r.error_type if r.success is False else None),
        "error_type": r.error_type, "outcome": r.outcome, "context": context if context is not None else {},
        "timestamp": r.timestamp.isoformat(), "version": r.version, "arm": r.arm, "call_id": r.id,
        "error_category": context.get("error_category") if isinstance(context, dict) else None,
    }


def window_metrics(cell: Cell, traces: list[dict]) -> dict[str, Any]:
    """The seed's ``before_metrics`` keys, from a window's cell and its recent calls."""
    decided = cell.successes + cell.failures
    consecutive = 0
    for t in reversed(traces):
        if t["success"]:
            break
        consecutive += 1
    durations = [t["duration_sec"] for t in traces if t["success"]]
    return {
        "success_rate": cell.successes / decided if decided else 0.0,
        "avg_duration_sec": sum(durations) / len(durations) if durations else 0.0,
        "total_tasks": decided,
        "consecutive_failures": consecutive,
    }


def run_strategy(guard: "Guard", target: str, window: Cell, since: float) -> None:
    """Ask the guard's strategy for a patch and propose it (never raises)."""
    strategy = guard.strategy
    with_policy = callable(getattr(strategy, "analyze_with_policy", None))
    change = guard.change(target, flush=False)
    in_flight = change is not None and change.in_flight
    if in_flight and not with_policy:
        return  # one change in flight per target: do not even ask
    actor = f"strategy:{type(strategy).__name__}"
    try:
        traces = [trace_dict(r) for r in guard.store.read_calls(target, since=since, limit=MAX_TRACES)]
        metrics = window_metrics(window, traces)
        if not with_policy:
            patch = strategy.analyze(agent_id=target, traces=traces, before_metrics=metrics)
            if patch:
                guard.propose(target, patch, actor=actor)
            return
        decision = strategy.analyze_with_policy(agent_id=target, traces=traces, before_metrics=metrics)
        if decision is not None:
            _act(guard, target, decision, change if in_flight else None, actor)
    except Exception as exc:
        report("strategy", exc)
        try:
            append_event(guard.store, "strategy_error", target, actor=guard.worker_id, error=repr(exc))
        except Exception as err:
            report("trail.append", err)


def _act(guard: "Guard", target: str, decision: StrategyDecision, in_flight: Change | None, actor: str) -> None:
    change_id = in_flight.id if in_flight else None
    if decision.rollback_recent_change:
        reason = f"{actor}: {decision.reason or 'rollback_recent_change'}"
        done = in_flight is not None and guard.rollback(target, actor=actor, reason=reason)
        action = "rolled_back" if done else ("rollback_refused" if in_flight else "nothing_to_roll_back")
    elif in_flight is not None:
        action = "change_in_flight"
    elif not decision.patch:
        action = "no_config_change"
    else:
        approve = decision.auto_apply and decision.canary_ratio != 0
        proposed = guard.propose(target, dict(decision.patch), policy=rollout_policy(guard.policy, decision),
                                 actor=actor, approve=approve, metadata=decision.metadata)
        change_id, action = proposed.id, ("awaiting_approval" if proposed.state == State.PROPOSED else proposed.state)
    append_event(guard.store, "strategy_decision", target, change_id=change_id, actor=actor, action=action,
                 patch=decision.patch, policy=decision.policy_fields(), reason=decision.reason, **decision.metadata)
