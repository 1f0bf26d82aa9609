"""``Verdict``: what the detector says about a change, with its evidence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ("Verdict",)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``kind`` is ``healthy`` (shown non-inferior), ``regressed`` or ``inconclusive``.

    ``metric`` names what decided it (``success_rate``, ``latency``, ``latency_p95``,
    ``tripwire``, ``horizon``, ``manual``); ``evidence`` holds n per arm, estimates, bounds,
    alpha, tolerances and the test's name.
    """

    kind: str
    reason: str
    metric: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    HEALTHY = "healthy"
    REGRESSED = "regressed"
    INCONCLUSIVE = "inconclusive"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason, "metric": self.metric, "evidence": self.evidence}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Verdict | None":
        if not data:
            return None
        return cls(data["kind"], data.get("reason", ""), data.get("metric"), data.get("evidence") or {})
