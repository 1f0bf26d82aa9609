"""The seed's public API (``self-improving-loop`` 0.1.x) on top of the Guard.

``SelfImprovingLoop.execute_with_improvement`` keeps its signature and return keys, and
runs in switch mode: the strategy's patch is applied through the ``ConfigAdapter``, judged
against a frozen baseline of the calls before it, and rolled back on evidence. What the
seed got wrong is fixed underneath (``docs/migrating-from-0.1.md``, "Defects fixed"): the statistics (A1-A7), the
lifecycle (B1-B9), shared state across threads and processes (C1-C3), and async calls,
error payloads and bookkeeping errors (D1-D6).
"""

from __future__ import annotations

import inspect
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from ._internal.failopen import report
from .adapters import ConfigAdapter
from .guard import Guard
from .notify import TelegramNotifier
from .policy import RolloutPolicy
from .rollout import Change, State
from .seed_stores import AutoRollback
from .store.base import Store
from .store.jsonl import JsonlStore
from .store.sqlite import SqliteStore
from .thresholds import AdaptiveThreshold

__all__ = ("AutoRollback", "SelfImprovingLoop")

DEFAULT_DATA_DIR = Path.home() / ".self-improving-loop" / "data"


class _StrategyHooks:
    """The seed's legacy strategy hooks (``current_config``/``apply``/``rollback``) as a
    ConfigAdapter, used when no ``config_adapter`` is given."""

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def get_config(self, agent_id: str) -> dict:
        return dict(self.strategy.current_config(agent_id=agent_id))

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        return self.strategy.apply(agent_id=agent_id, config_patch=config_patch)

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        self.strategy.rollback(agent_id=agent_id, backup_config=backup_config)


def _seed_metrics(arm: dict[str, Any] | None, n: int) -> dict[str, Any]:
    arm = arm or {}
    return {"success_rate": arm.get("rate", 0.0), "avg_duration_sec": arm.get("latency", 0.0), "total_tasks": n,
            "consecutive_failures": arm.get("consecutive", 0)}


class SelfImprovingLoop:
    """Seed-compatible loop: run a call, improve on failures, roll back bad patches."""

    def __init__(
        self,
        data_dir: str | None = None,
        notifier: Any = None,
        strategy: Any = None,
        improvement_strategy: Any = None,
        config_adapter: ConfigAdapter | None = None,
        storage: str = "jsonl",
        jsonl_max_bytes: int | None = None,
        jsonl_archive_dir: str | None = None,
        jsonl_max_archives: int = 5,
        *,
        policy: RolloutPolicy | None = None,
    ) -> None:
        if strategy is not None and improvement_strategy is not None:
            raise ValueError("pass either strategy or improvement_strategy, not both (they are aliases)")
        if storage not in ("jsonl", "sqlite"):
            raise ValueError(f"storage must be 'jsonl' or 'sqlite', not {storage!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.improvement_strategy = strategy if strategy is not None else improvement_strategy
        self.notifier = notifier if notifier is not None else TelegramNotifier(enabled=True)
        if config_adapter is None and self.improvement_strategy is not None and all(
            callable(getattr(self.improvement_strategy, name, None)) for name in ("current_config", "apply", "rollback")
        ):
            config_adapter = _StrategyHooks(self.improvement_strategy)
        self.config_adapter = config_adapter
        self.trace_store = self._open_store(jsonl_max_bytes, jsonl_archive_dir, jsonl_max_archives)
        self.adaptive_threshold = AdaptiveThreshold(self.data_dir)
        self.guard = Guard(
            self.trace_store, durability="sync", adapter=config_adapter, strategy=self.improvement_strategy,
            strategy_inline=True, mode="switch", policy=policy, thresholds=self.adaptive_threshold,
            refresh_interval=0.0,
        )
        # backups and rollbacks recorded through it go to the Guard's store; a seed's
        # rollback_history.jsonl in data_dir is listed too
        self.auto_rollback = self.rollback = AutoRollback(self.data_dir, guard=self.guard)
        self._triggers: dict[str, int] = {}
        self._reported: set[str] = set()
        self._announced: set[str] = set()  # change ids already reported as applied
        self._claimed: dict[str, int] = {}  # triggers already reported, per agent
        self._lock = threading.Lock()
        self.guard.on_trigger(self._on_trigger)

    def _open_store(self, max_bytes: int | None, archive_dir: str | None, max_archives: int) -> Store:
        """The loop's store in ``data_dir``: ``calls.jsonl`` or ``sil.sqlite3``; in a folder
        the seed used (its ``traces.jsonl`` or ``traces.sqlite3``, and no sil store yet), the
        seed's own file, so an upgraded loop keeps its history and the seed's line format."""
        from .seed_stores import JsonlTraceStore, SQLiteTraceStore

        if self.storage == "jsonl":
            seed_file = self.data_dir / "traces.jsonl"
            if seed_file.exists() and not (self.data_dir / "calls.jsonl").exists():
                return JsonlTraceStore(seed_file, max_bytes, archive_dir, max_archives).store
            return JsonlStore(self.data_dir, max_bytes=max_bytes, archive_dir=archive_dir, max_archives=max_archives)
        seed_db = self.data_dir / "traces.sqlite3"
        if seed_db.exists() and not (self.data_dir / "sil.sqlite3").exists():
            return SQLiteTraceStore(seed_db).store
        return SqliteStore(self.data_dir / "sil.sqlite3")

    # -- the call ------------------------------------------------------------------------
    def execute_with_improvement(self, agent_id: str, task: str, execute_fn: Callable[[], Any],
                                 context: dict | None = None) -> dict[str, Any]:
        """Run ``execute_fn()`` (no arguments) under guard; returns the seed's result dict:
        ``success``, ``result``, ``error``, ``duration_sec``, ``improvement_triggered``,
        ``improvement_applied``, ``rollback_executed``."""
        if inspect.iscoroutinefunction(execute_fn):
            raise TypeError("execute_fn is a coroutine function: use aexecute_with_improvement (a coroutine is "
                            "never counted as a success)")
        before, t0 = self._begin(agent_id)
        result, error = None, None
        try:
            with self.guard.call(agent_id, context={"task": task, **(context or {})}):
                result = execute_fn()
                if inspect.isawaitable(result):
                    _close(result)
                    raise TypeError("execute_fn returned an awaitable: use aexecute_with_improvement")
        except Exception as exc:  # recorded with its type and message by guard.call
            result, error = None, exc
        return self._end(agent_id, before, t0, result, error)

    track = execute_with_improvement

    async def aexecute_with_improvement(self, agent_id: str, task: str,
                                        execute_fn: Callable[[], Awaitable[Any] | Any],
                                        context: dict | None = None) -> dict[str, Any]:
        """Async twin: ``execute_fn()`` may be a coroutine function (it is awaited)."""
        before, t0 = self._begin(agent_id)
        result, error = None, None
        try:
            async with self.guard.call(agent_id, context={"task": task, **(context or {})}):
                result = execute_fn()
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            result, error = None, exc
        return self._end(agent_id, before, t0, result, error)

    atrack = aexecute_with_improvement

    def _begin(self, agent_id: str) -> tuple[tuple[str | None, int], float]:
        row = self._latest(agent_id)
        return ((row.id if row else None), self._triggers.get(agent_id, 0)), time.perf_counter()

    def _end(self, agent_id: str, begun: tuple[str | None, int], t0: float, result: Any,
             error: BaseException | None) -> dict[str, Any]:
        # the record is durable (sync mode) and the trigger and strategy ran inline already
        before, triggers = begun
        row = self._latest(agent_id)
        with self._lock:  # one call reports each change and each trigger (concurrent calls: C2)
            # a change waiting for approval (a strategy's auto_apply=False) is not applied yet
            applied = int(row is not None and row.id != before and row.id not in self._announced
                          and row.state not in (State.REJECTED, State.PROPOSED))
            if applied:
                self._announced.add(row.id)
            total = self._triggers.get(agent_id, 0)
            triggered = total > triggers and total > self._claimed.get(agent_id, 0)
            if triggered:
                self._claimed[agent_id] = total
        if applied:
            try:
                self.notifier.notify_improvement(agent_id, 1, {"patch": row.patch, "mode": row.mode})
            except Exception as exc:  # seed bug D3: a notifier error lost the agent's result
                report("notifier", exc)
        rollback = self.check_and_rollback(agent_id)
        return {
            "success": error is None,
            "result": result,
            "error": None if error is None else str(error),
            "duration_sec": time.perf_counter() - t0,
            "improvement_triggered": triggered,
            "improvement_applied": applied,
            "rollback_executed": rollback,
        }

    def _on_trigger(self, event: dict) -> None:
        with self._lock:
            self._triggers[event["target"]] = self._triggers.get(event["target"], 0) + 1

    def _latest(self, agent_id: str) -> Change | None:
        return self.guard.change(agent_id, flush=False)

    # -- the seed's other public methods -------------------------------------------------
    def check_and_rollback(self, agent_id: str) -> dict[str, Any] | None:
        """Judge the agent's pending patch now; the seed-shaped rollback dict when this
        (or an earlier, unreported) check rolled it back or failed to, else ``None``."""
        try:
            self.guard.evaluate(agent_id)
        except Exception as exc:
            report("check_and_rollback", exc)
        row = self._latest(agent_id)
        if row is None or row.state not in (State.ROLLED_BACK, State.RESTORE_FAILED):
            return None
        key = f"{row.id}:{row.state}"
        with self._lock:
            if key in self._reported:
                return None  # reported once, not on every later call (seed bug B4)
            self._reported.add(key)
        verdict = row.verdict.as_dict() if row.verdict else {}
        ev = verdict.get("evidence") or {}
        n = ev.get("n", {})
        sr = ev.get("success_rate", {})
        lat = ev.get("latency", {})
        before = _seed_metrics({"rate": sr.get("baseline", 0.0), "latency": lat.get("baseline_median_s", 0.0)},
                               n.get("baseline", 0))
        after = _seed_metrics({"rate": sr.get("candidate", 0.0), "latency": lat.get("candidate_median_s", 0.0)},
                              n.get("candidate", 0))
        out = {"agent_id": agent_id, "reason": verdict.get("reason", row.reason),
               "before_metrics": before, "after_metrics": after, "backup_id": row.id}
        source = "config_adapter" if not isinstance(self.config_adapter, _StrategyHooks) else "improvement_strategy"
        if row.state == State.ROLLED_BACK:
            out.update(success=True, restore_applied=True, restore_source=source)
        else:
            out.update(success=False, restore_applied=False, restore_source=source,
                       error=row.restore_error or "restore failed")
        try:
            # the seed passed before/after metrics; success and restore_applied say whether it worked
            self.notifier.notify_rollback(agent_id, out["reason"], {
                "before_metrics": before, "after_metrics": after,
                "success": out["success"], "restore_applied": out["restore_applied"]})
        except Exception as exc:
            report("notifier", exc)
        return out

    def get_improvement_stats(self, agent_id: str | None = None) -> dict[str, Any]:
        changes = [v for _, v, _ in self.trace_store.kv_list("change") if v["state"] != State.REJECTED]
        history = self.auto_rollback.get_rollback_history(agent_id)
        if agent_id is not None:
            mine = sorted((c for c in changes if c["target"] == agent_id), key=lambda c: c["created"])
            return {
                "agent_id": agent_id,
                "total_tasks": self.guard.stats(agent_id).n,
                "last_improvement": _iso(mine[-1]["created"]) if mine else None,
                "rollback_count": len(history),
                "rollback_history": history[-5:],
            }
        return {
            "total_improvements": len(changes),
            "agents_improved": sorted({c["target"] for c in changes}),  # the seed's type: a list
            "total_rollbacks": len(history),
            "agents_rolled_back": len({h["agent_id"] for h in history}),
        }

    def close(self) -> None:
        self.guard.close()
        self.trace_store.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _close(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
