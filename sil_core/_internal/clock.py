"""The time a guard reads: wall-clock seconds for what is stored, monotonic seconds for
what is waited on. Injectable (``Guard(clock=...)``), so tests move time instead of
sleeping through refresh intervals and cooldowns (``sil_core.testing.ManualClock``)."""

from __future__ import annotations

import threading
import time as _time
from typing import Protocol

__all__ = ("SYSTEM", "Clock", "ManualClock", "SystemClock")


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The process's clocks."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM = SystemClock()


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)`` moves both readings."""

    def __init__(self, start: float | None = None) -> None:
        self._wall = _time.time() if start is None else float(start)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def __repr__(self) -> str:
        return f"ManualClock(time={self._wall:.3f})"
