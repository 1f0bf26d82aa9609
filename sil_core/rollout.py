"""The change lifecycle: states, the one table of allowed transitions, and ``Change``.

::

    proposed --(applied)--> canary(w1) -> canary(w2) ... -> promoted
        |                      |                        \\-> rolled_back
        |                      |                        \\-> restore_failed -> rolled_back (retried)
        \\-> rejected           \\-> paused (inconclusive with on_inconclusive="hold", or by hand)

The state string stored on the change row is the truth; every move is a compare-and-set on
that row, so when several workers share a store exactly one of them makes each move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .detect.verdict import Verdict
from .errors import SilError

__all__ = ("Change", "IN_FLIGHT", "TRANSITIONS", "InvalidTransition", "State")


class State:
    PROPOSED = "proposed"
    CANARY = "canary"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    RESTORE_FAILED = "restore_failed"
    REJECTED = "rejected"


#: the only moves a change can make
TRANSITIONS: dict[str, frozenset[str]] = {
    State.PROPOSED: frozenset({State.CANARY, State.REJECTED}),
    State.CANARY: frozenset({State.CANARY, State.PAUSED, State.PROMOTED, State.ROLLED_BACK, State.RESTORE_FAILED}),
    State.PAUSED: frozenset({State.CANARY, State.PROMOTED, State.ROLLED_BACK, State.RESTORE_FAILED}),
    State.RESTORE_FAILED: frozenset({State.ROLLED_BACK, State.RESTORE_FAILED}),
    State.PROMOTED: frozenset(),
    State.ROLLED_BACK: frozenset(),
    State.REJECTED: frozenset(),
}
#: states in which a change still holds its target (a new proposal waits)
IN_FLIGHT = frozenset({State.PROPOSED, State.CANARY, State.PAUSED, State.RESTORE_FAILED})


class InvalidTransition(SilError):
    """A change was asked to move where the lifecycle does not allow (e.g. promote a
    rolled-back change)."""


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"a change in state {current!r} cannot become {new!r}")


@dataclass
class Change:
    """A move of a target from a baseline version to a candidate version.

    Read-only view of the stored change row; ``verdict`` is the latest decisive verdict, or
    the detector's current reading while the change is in flight.
    """

    id: str
    target: str
    state: str
    mode: str
    patch: dict[str, Any]
    baseline_version: str
    candidate_version: str
    weight: float
    created: float
    updated: float
    reason: str = ""
    verdict: Verdict | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    actor: str = ""
    restore_attempts: int = 0
    #: ``"change"`` (a proposal judged under guard) or ``"revert"`` (a person restored a version)
    kind: str = "change"

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    @classmethod
    def from_row(cls, row: dict[str, Any], verdict: Verdict | None = None) -> "Change":
        return cls(
            id=row["id"], target=row["target"], state=row["state"], mode=row["mode"], patch=row["patch"],
            baseline_version=row["baseline_version"], candidate_version=row["candidate_version"],
            weight=row.get("weight", 0.0), created=row["created"], updated=row["updated"],
            reason=row.get("reason", ""), verdict=verdict or Verdict.from_dict(row.get("verdict")),
            policy=row.get("policy", {}), actor=row.get("actor", ""),
            restore_attempts=row.get("restore", {}).get("attempts", 0), kind=row.get("kind", "change"),
        )
