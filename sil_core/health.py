"""How a guard is doing: what it queued, wrote, dropped and set aside, and whether its store
answers. Each worker also writes its health to the store every ``HEARTBEAT_S`` seconds (a
state row ``("worker", worker_id)``), so ``sil status`` shows every worker's, not only its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ("HEARTBEAT_S", "Health")

#: how often a worker writes its health to the store
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class Health:
    """A guard's health. ``dropped`` counts records lost because more than ``max_pending``
    waited; ``dropped_after_close`` those made after ``close()``; ``set_aside`` records
    (or feedback) the store refused while it took others; ``invalid_values`` values dropped
    at the boundary in this process (not finite, negative latency), per reason; ``store_reachable`` whether
    the store answered a read just now."""

    worker_id: str
    store: str
    pending: int
    written: int
    failed_writes: int
    dropped: int
    dropped_after_close: int
    set_aside: int
    invalid_values: dict[str, int] = field(default_factory=dict)
    last_write_error: str | None = None
    store_reachable: bool = True
    ts: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost and the store answers."""
        return self.store_reachable and not (self.dropped or self.dropped_after_close or self.set_aside) \
            and self.last_write_error is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}
