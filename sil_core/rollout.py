"""The change lifecycle: modes, arms, states, the one table of allowed transitions, and
``Change`` (see ``docs/lifecycle.md``).

::

    proposed --(applied)--> canary(w1) -> canary(w2) ... -> promoted    (mode "canary")
        |       \\-------> switched ----------------------> promoted    (mode "switch")
        |                      |                        \\-> rolled_back
        |                      |                        \\-> restore_failed -> rolled_back (retried)
        \\-> rejected           \\-> paused (inconclusive with on_inconclusive="hold", or by hand)

The state string stored on the change row is the truth; every move is a compare-and-set on
that row, so when several workers share a store exactly one of them makes each move.
Releases before the ``switched`` state stored a switch-mode change in flight as
``canary``; such rows are read as ``switched`` (``sil_core.changes.rows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .detect.verdict import Verdict
from .errors import SilError

__all__ = ("Arm", "Change", "IN_FLIGHT", "SERVING", "TRANSITIONS", "InvalidTransition", "Mode", "State")


class Mode:
    """How a change is rolled out."""

    #: baseline and candidate serve side by side, the candidate's share ramped up
    CANARY = "canary"
    #: the patch is applied globally through the adapter, judged against a frozen baseline window
    SWITCH = "switch"
    ALL = (CANARY, SWITCH)


class Arm:
    """Which side of a change served a call (``None``: no change in flight)."""

    BASELINE = "baseline"
    CANDIDATE = "candidate"


class State:
    """Where a change is in its lifecycle (the ``state`` of its stored row)."""

    PROPOSED = "proposed"
    #: a canary-mode change serving both arms
    CANARY = "canary"
    #: a switch-mode change serving its candidate everywhere
    SWITCHED = "switched"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    RESTORE_FAILED = "restore_failed"
    REJECTED = "rejected"

    @staticmethod
    def running(mode: str) -> str:
        """The state of a change of ``mode`` that is being judged (not paused)."""
        return State.SWITCHED if mode == Mode.SWITCH else State.CANARY


_MOVES = frozenset({State.PAUSED, State.PROMOTED, State.ROLLED_BACK, State.RESTORE_FAILED})
#: the only moves a change can make
TRANSITIONS: dict[str, frozenset[str]] = {
    State.PROPOSED: frozenset({State.CANARY, State.SWITCHED, State.REJECTED}),
    State.CANARY: _MOVES | {State.CANARY},
    State.SWITCHED: _MOVES | {State.SWITCHED},
    State.PAUSED: (_MOVES - {State.PAUSED}) | {State.CANARY, State.SWITCHED},
    State.RESTORE_FAILED: frozenset({State.ROLLED_BACK, State.RESTORE_FAILED}),
    State.PROMOTED: frozenset(),
    State.ROLLED_BACK: frozenset(),
    State.REJECTED: frozenset(),
}
#: states in which a change still holds its target (a new proposal waits)
IN_FLIGHT = frozenset({State.PROPOSED, State.CANARY, State.SWITCHED, State.PAUSED, State.RESTORE_FAILED})
#: states in which a change's candidate serves calls (routing gives it an arm; it is judged)
SERVING = frozenset({State.CANARY, State.SWITCHED, State.PAUSED})


class InvalidTransition(SilError):
    """A change was asked to move where the lifecycle does not allow (e.g. promote a
    rolled-back change)."""


def check_transition(current: str, new: str) -> None:
    if new not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"a change in state {current!r} cannot become {new!r}")


class InState:
    """What a change's ``state`` says, for ``Change`` and the stored ``ChangeRow`` alike."""

    state: str

    @property
    def in_flight(self) -> bool:
        """Whether it still holds its target (a new proposal is refused)."""
        return self.state in IN_FLIGHT

    @property
    def serving(self) -> bool:
        """Whether its candidate serves calls now (``canary``, ``switched`` or ``paused``)."""
        return self.state in SERVING


@dataclass
class Change(InState):
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
    #: when its candidate started serving (0 before)
    started: float = 0.0
    #: why it was proposed (``propose(metadata=...)``)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: the last error of a rollback whose restore failed (``restore_failed``)
    restore_error: str | None = None
    #: how another process rebuilds the change's adapter (``ConfigAdapter.spec()``), if it can
    adapter_spec: Any = None
    #: how routing keys fall on arms: ``bucket(change.id, key, change.key_hash) < weight``
    key_hash: str = "crc32"

    @classmethod
    def from_row(cls, row: Any, verdict: Verdict | None = None) -> "Change":
        """The change of a stored row (a ``ChangeRow``, or the dict a store holds)."""
        from .changes.rows import ChangeRow

        if isinstance(row, dict):
            row = ChangeRow.from_dict(row)
        return cls(
            id=row.id, target=row.target, state=row.state, mode=row.mode, patch=row.patch,
            baseline_version=row.baseline_version, candidate_version=row.candidate_version, weight=row.weight,
            created=row.created, updated=row.updated, reason=row.reason,
            verdict=verdict or Verdict.from_dict(row.verdict), policy=row.policy, actor=row.actor,
            restore_attempts=row.restore.get("attempts", 0), kind=row.kind, started=row.started,
            metadata=row.metadata, restore_error=row.restore.get("error"), adapter_spec=row.adapter_spec,
            key_hash=row.key_hash,
        )
