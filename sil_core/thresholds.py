"""Adaptive failure thresholds: when do a target's failures mean "do something"?

The seed's four profiles, kept: a target's call frequency picks ``high`` (more than 10
calls a day), ``medium`` or ``low`` (fewer than 3); a target marked critical gets
``critical``. Fixed from the seed (``docs/migrating-from-0.1.md``, "Defects fixed", A4, A5):

* critical only when marked (``set_manual_threshold(..., is_critical=True)`` or
  ``critical=``), never by matching words in the name, and a manual ``is_critical`` is
  honoured even when other manual values are set;
* the trigger needs a failure *rate* as well as a count (``min_failure_rate``), so a busy
  agent with a 0.1 % error rate does not trigger every cooldown forever;
* a target with fewer than 3 calls in all is ``medium`` (the seed made it ``low`` after one).

Manual overrides persist atomically to ``adaptive_thresholds.json`` when a ``data_dir``
is given, and are re-read when another process changes the file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from ._internal.failopen import report
from ._internal.files import atomic_write

__all__ = ("AdaptiveThreshold", "PROFILES", "ThresholdProfile")


@dataclass(frozen=True, slots=True)
class ThresholdProfile:
    """When failures trigger: ``failure_threshold`` failures *and* at least
    ``min_failure_rate`` of decided calls failing within ``analysis_window_hours``; then
    nothing more for ``cooldown_hours``."""

    name: str
    failure_threshold: int
    analysis_window_hours: float
    cooldown_hours: float
    min_failure_rate: float
    is_critical: bool = False
    source: str = "auto"

    def triggers(self, failures: int, calls: int) -> bool:
        if failures < self.failure_threshold or failures <= 0:
            return False
        return calls > 0 and failures / calls >= self.min_failure_rate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, ThresholdProfile] = {
    "high": ThresholdProfile("high", 5, 48, 3, 0.05),
    "medium": ThresholdProfile("medium", 3, 24, 6, 0.10),
    "low": ThresholdProfile("low", 2, 72, 12, 0.0),
    "critical": ThresholdProfile("critical", 1, 24, 6, 0.0, is_critical=True),
}
_MANUAL_KEYS = ("failure_threshold", "analysis_window_hours", "cooldown_hours", "is_critical", "min_failure_rate")


class AdaptiveThreshold:
    """Per-target failure thresholds (seed-compatible API, see module docstring).

    Args:
        data_dir: where ``adaptive_thresholds.json`` keeps manual overrides; ``None``
            keeps them in memory only.
        critical: targets to treat as critical without a manual entry.
    """

    HIGH_PER_DAY = 10
    LOW_PER_DAY = 3

    def __init__(self, data_dir: str | os.PathLike | None = None, *, critical: Iterable[str] = ()) -> None:
        self.path = Path(data_dir) / "adaptive_thresholds.json" if data_dir is not None else None
        self.critical = set(critical)
        self._lock = threading.Lock()
        self._manual: dict[str, dict[str, Any]] = {}
        self._stamp: tuple | None = None
        self._load()

    # -- overrides -----------------------------------------------------------------------
    def set_manual_threshold(
        self,
        agent_id: str,
        failure_threshold: int | None = None,
        analysis_window_hours: float | None = None,
        cooldown_hours: float | None = None,
        is_critical: bool | None = None,
        min_failure_rate: float | None = None,
    ) -> None:
        """Override some of a target's values; ``None`` leaves a value as it is."""
        given = dict(zip(_MANUAL_KEYS, (failure_threshold, analysis_window_hours, cooldown_hours, is_critical, min_failure_rate)))
        with self._lock:
            self._load_unlocked()
            entry = self._manual.setdefault(agent_id, {})
            entry.update({k: v for k, v in given.items() if v is not None})
            self._save_unlocked()

    def clear_manual_threshold(self, agent_id: str) -> None:
        with self._lock:
            self._load_unlocked()
            self._manual.pop(agent_id, None)
            self._save_unlocked()

    # -- decisions -----------------------------------------------------------------------
    def profile(self, agent_id: str, *, calls_24h: int, total_calls: int | None = None) -> ThresholdProfile:
        """The profile in force for a target with ``calls_24h`` calls in the last day."""
        self._load()
        manual = self._manual.get(agent_id, {})
        critical = manual.get("is_critical", agent_id in self.critical)
        if critical:
            base = PROFILES["critical"]
        elif total_calls is not None and total_calls < 3:
            base = PROFILES["medium"]
        elif calls_24h > self.HIGH_PER_DAY:
            base = PROFILES["high"]
        elif calls_24h < self.LOW_PER_DAY:
            base = PROFILES["low"]
        else:
            base = PROFILES["medium"]
        if not manual:
            return base
        values = {k: manual[k] for k in _MANUAL_KEYS if k in manual and k != "is_critical"}
        return replace(base, **values, is_critical=bool(critical), source="manual")

    def get_threshold(self, agent_id: str, task_history: list | None = None, *, calls_24h: int | None = None) -> tuple:
        """Seed form: ``(failure_threshold, analysis_window_hours, cooldown_hours)``."""
        p = self._profile_from_history(agent_id, task_history, calls_24h)
        return (p.failure_threshold, p.analysis_window_hours, p.cooldown_hours)

    def get_agent_profile(self, agent_id: str, task_history: list | None = None, *, calls_24h: int | None = None) -> dict:
        """Seed form: ``{agent_id, frequency, is_critical, failure_threshold, ...}``."""
        p = self._profile_from_history(agent_id, task_history, calls_24h)
        n = calls_24h if calls_24h is not None else _count_last_day(task_history or [])
        return {
            "agent_id": agent_id, "frequency": p.name, "is_critical": p.is_critical,
            "failure_threshold": p.failure_threshold, "analysis_window_hours": p.analysis_window_hours,
            "cooldown_hours": p.cooldown_hours, "min_failure_rate": p.min_failure_rate,
            "tasks_per_day": n, "source": p.source,
        }

    def _profile_from_history(self, agent_id: str, task_history: list | None, calls_24h: int | None) -> ThresholdProfile:
        history = task_history or []
        n = calls_24h if calls_24h is not None else _count_last_day(history)
        total = None if calls_24h is not None else len(history)
        return self.profile(agent_id, calls_24h=n, total_calls=total)

    # -- persistence ---------------------------------------------------------------------
    def _load(self) -> None:
        if self.path is None:
            return
        with self._lock:
            self._load_unlocked()

    def _load_unlocked(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            self._manual = {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}
        except (OSError, ValueError) as exc:  # a corrupt file must not break the guard (seed C3)
            report(f"reading {self.path}", exc)
        self._stamp = stamp

    def _save_unlocked(self) -> None:
        if self.path is None:
            return
        atomic_write(self.path, json.dumps(self._manual, indent=2, sort_keys=True).encode("utf-8"))
        st = self.path.stat()
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)


def _count_last_day(history: list) -> int:
    """Calls in the last 24 h of a seed-style trace list (``timestamp`` or ``ts``)."""
    import time

    from .records import parse_ts

    cutoff = time.time() - 86400
    n = 0
    for trace in history:
        raw = trace.get("timestamp") or trace.get("start_time") or trace.get("ts") if isinstance(trace, dict) else getattr(trace, "ts", None)
        try:
            ts = parse_ts(raw) if isinstance(raw, str) else float(raw)
        except (TypeError, ValueError):
            continue
        if ts >= cutoff:
            n += 1
    return n
