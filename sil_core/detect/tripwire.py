"""Catastrophic-failure tripwire: acts before the minimum sample (seed bug A6).

Five candidate failures in a row roll the change back at once, even at call 5 (the seed
waited for call 10). The run is counted over the change's first ``window`` candidate
calls, in the order they started, whoever recorded them and whenever their verdict
arrived: a call that returned normally and was judged bad later (feedback, a check node)
counts as the failure it is. The state is a small row in the store (:class:`TripwireState`,
read and written with compare-and-set), so every worker and every one-shot process adds
to the same run. In canary mode the tripwire stands down while the baseline is failing as
well (:func:`is_outage`): then the cause is an outage, not the change.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ("ConsecutiveFailures", "TripwireState", "is_outage")

FORMAT = 1


class ConsecutiveFailures:
    """Counts a run of failures; ``observe`` returns ``True`` when the run reaches ``limit``."""

    __slots__ = ("limit", "run")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.run = 0

    def observe(self, success: bool | None) -> bool:
        if success is None:
            return False
        self.run = 0 if success else self.run + 1
        return self.run >= self.limit


def is_outage(baseline_calls: int, baseline_failures: int) -> bool:
    """The baseline fails too while the candidate's run lasts: at least 2 failures and at
    least half of its decided calls since the run began (``benchmarks/detection.py``
    measures this rule against outages during a canary)."""
    return baseline_failures >= 2 and baseline_failures * 2 >= baseline_calls


@dataclass
class TripwireState:
    """The first ``window`` candidate calls of one change, as ``[ts, call_id, ok, judged]``
    in start order (``judged``: the call returned normally and a later verdict, feedback
    or a check, failed it), and whether the tripwire fired (with its evidence)."""

    limit: int
    window: int
    calls: list[list[Any]] = field(default_factory=list)
    fired: dict[str, Any] | None = None

    def add(self, ts: float, call_id: str, ok: bool, *, judged: bool = False, override: bool = False) -> bool:
        """Note a candidate call; ``override``: this is a later verdict on it, which replaces
        what its record said. Returns ``True`` if the state changed."""
        for entry in self.calls:
            if entry[1] == call_id:
                if override and entry[2] != ok:
                    entry[2], entry[3] = ok, judged
                    return True
                return False
        if len(self.calls) >= self.window and ts >= self.calls[-1][0]:
            return False  # past the window
        keys = [(e[0], e[1]) for e in self.calls]
        self.calls.insert(bisect.bisect(keys, (ts, call_id)), [ts, call_id, ok, judged])
        del self.calls[self.window:]
        return True

    def failure_run(self) -> tuple[int, int] | None:
        """``(first, last)`` indices of the first run of ``limit`` consecutive failures."""
        run = 0
        for i, entry in enumerate(self.calls):
            run = 0 if entry[2] else run + 1
            if run >= self.limit:
                return i - run + 1, i
        return None

    def check(self, started: float, baseline_since: Callable[[float], tuple[int, int]], *, now: float,
              by: str) -> bool:
        """Fire if the calls hold a run of ``limit`` failures, unless it is an outage: the
        baseline's ``(decided calls, failures)`` since the call before the run began
        (``baseline_since(ts)``; ``started`` for a run from the first call) say it fails
        as well (:func:`is_outage`). Returns ``True`` if it fired now."""
        if self.fired:
            return False
        run = self.failure_run()
        if run is None:
            return False
        first, last = run
        since = self.calls[first - 1][0] if first > 0 else started
        base_calls, base_failures = baseline_since(since)
        if is_outage(base_calls, base_failures):
            return False
        run_calls = self.calls[first:last + 1]
        self.fired = {"ts": now, "by": by, "calls": [e[1] for e in run_calls],
                      "judged_failed": sum(1 for e in run_calls if e[3]),
                      "baseline_since_run": {"calls": base_calls, "failures": base_failures}}
        return True

    def full(self) -> bool:
        return len(self.calls) >= self.window

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "limit": self.limit, "window": self.window, "calls": self.calls,
                "fired": self.fired}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TripwireState":
        calls = [[*e, False][:4] for e in data.get("calls") or ()]
        return cls(int(data["limit"]), int(data["window"]), calls, data.get("fired"))
