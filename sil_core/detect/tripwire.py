"""Catastrophic-failure tripwire: acts before the minimum sample (seed bug A6).

``consecutive_failures(5)``: five candidate failures in a row roll the change back at once,
even at call 5 (the seed waited for call 10). In canary mode the tripwire stands down while
the baseline is failing as well, because then the cause is an outage, not the change.
"""

from __future__ import annotations

__all__ = ("ConsecutiveFailures",)


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
