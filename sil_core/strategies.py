"""Strategies: who proposes a config patch when a target keeps failing.

A strategy is any object with the seed's ``analyze(agent_id=, traces=, before_metrics=)``
returning a patch dict or ``None``, and optionally ``on_verdict(change, verdict)``, told
how each change it proposed ended (so it can stop proposing what was rolled back). The
guard calls it off the caller's thread with a bounded window of recent calls (at most
``MAX_TRACES``), never the whole history (seed bug D7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._internal.failopen import report
from .aggregates import Cell
from .records import CallRecord
from .rollout import IN_FLIGHT
from .trail import append_event

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("MAX_TRACES", "Strategy", "trace_dict")

MAX_TRACES = 200


@runtime_checkable
class Strategy(Protocol):
    def analyze(self, agent_id: str, traces: list[dict], before_metrics: dict | None = None) -> dict | None: ...


def trace_dict(r: CallRecord) -> dict[str, Any]:
    """A call record in the seed's trace shape (plus sil-guard's extra fields)."""
    context = r.context_value()
    return {
        "agent_id": r.target, "task": context.get("task", "") if isinstance(context, dict) else "",
        "success": bool(r.success), "duration_sec": r.duration_s,
        "error": r.error_message or (r.error_type if r.success is False else None),
        "error_type": r.error_type, "outcome": r.outcome, "context": context if context is not None else {},
        "timestamp": r.timestamp.isoformat(), "version": r.version, "arm": r.arm, "call_id": r.id,
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
    change = guard._changes.latest_row(target)
    if change is not None and change["state"] in IN_FLIGHT:
        return  # one change in flight per target: do not even ask
    try:
        traces = [trace_dict(r) for r in guard.store.read_calls(target, since=since, limit=MAX_TRACES)]
        patch = guard.strategy.analyze(agent_id=target, traces=traces, before_metrics=window_metrics(window, traces))
        if patch:
            guard.propose(target, patch, actor=f"strategy:{type(guard.strategy).__name__}")
    except Exception as exc:
        report("strategy", exc)
        try:
            append_event(guard.store, "strategy_error", target, actor=guard.worker_id, error=repr(exc))
        except Exception as err:
            report("trail.append", err)
