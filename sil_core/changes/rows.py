"""Typed, versioned change rows and target heads, and the one place that reads and writes them.

A change is one row (``kind="change"``, key: the change id); a target's head
(``kind="head"``, key: the target) points at its latest change and names the version it
serves, whether it is pinned and which rolled-back patches are in their cooldown. Every
write is a compare-and-set on the row's revision. :class:`ChangeRow` and :class:`Head` are
frozen: a move builds a new row with :meth:`ChangeRow.replace` and writes it.

Rows carry ``format`` (:data:`FORMAT`). Rows written before it existed (format 1) read the
same, except that a switch-mode change in flight, stored in state ``canary``, reads as
``switched``; keys this release does not know are kept and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..policy import RolloutPolicy
from ..rollout import InState, Mode, State
from ..store.base import Store

__all__ = ("FORMAT", "ChangeRow", "Head", "Rows")

#: the format of change rows this release writes
FORMAT = 2


@dataclass(frozen=True)
class ChangeRow(InState):
    """A change as stored: what was proposed, where it is, and the evidence it froze."""

    id: str
    target: str
    state: str
    mode: str
    patch: dict
    patch_hash: str
    policy: dict
    created: float
    updated: float
    actor: str = ""
    #: ``"change"`` (judged under guard) or ``"revert"`` (a person restored a version)
    kind: str = "change"
    baseline_version: str = ""
    candidate_version: str = ""
    #: no version served the target before: its baseline calls were recorded unversioned
    baseline_unversioned: bool = False
    weight: float = 0.0
    step: int = 0
    step_started_n: int = 0
    #: when the candidate started serving (``created`` for rows that never started)
    started: float = 0.0
    reason: str = ""
    metadata: dict = field(default_factory=dict)
    #: how another process rebuilds the adapter (``ConfigAdapter.spec()``)
    adapter_spec: Any = None
    #: the baseline config, restored on a rollback
    backup: dict | None = None
    #: cells (``aggregates.Cell`` dumps): the switch baseline's window, and each arm at the start
    frozen_baseline: list | None = None
    snapshot_baseline: list | None = None
    snapshot_candidate: list | None = None
    #: the latest decisive verdict (``Verdict.as_dict()``)
    verdict: dict | None = None
    #: ``{"owner", "until"}`` while a worker acts on the change
    lease: dict | None = None
    #: ``{"action", "actor", "ts"}``: an action asked for by a process without the adapter
    requested: dict | None = None
    #: the action an ``observe_only`` policy would have taken
    observed: str | None = None
    #: ``{"attempts", "next_at", "error"}`` of a rollback whose restore failed
    restore: dict = field(default_factory=dict)
    #: the post-promotion watch: until when, whether it alerted, and its two cells
    watch_until: float = 0.0
    watch_alerted: float | None = None
    snapshot_promoted: list | None = None
    watch_baseline: list | None = None
    #: ``False`` for a change rolled back without refusing its patch afterwards (superseded)
    cooldown: bool = True
    #: how routing keys are hashed to arms (``routing.bucket``); rows from before it: crc32
    key_hash: str = "crc32"
    #: keys of the stored row this release does not know (kept, written back)
    extra: dict = field(default_factory=dict)
    format: int = FORMAT

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "ChangeRow":
        """Read a stored row of any format."""
        values = {k: v for k, v in data.items() if k in _FIELDS}
        values["extra"] = {k: v for k, v in data.items() if k not in _FIELDS}
        values.setdefault("format", 1)
        values.setdefault("started", values.get("created", 0.0))
        if values.get("state") == State.CANARY and values.get("mode") == Mode.SWITCH:
            values["state"] = State.SWITCHED  # format 1 stored a switch in flight as "canary"
        for key in ("metadata", "restore"):
            if values.get(key) is None:
                values[key] = {}
        return cls(**values)

    def as_dict(self) -> dict:
        """The row to store: unknown keys first, then every field that is set."""
        out = dict(self.extra)
        for f in _STORED:
            value = getattr(self, f)
            if value is not None:
                out[f] = value
        out["format"] = FORMAT
        return out

    def replace(self, **changes: Any) -> "ChangeRow":
        return dataclasses.replace(self, **changes)

    # -- derived (and in_flight, serving from InState) -------------------------------------
    @property
    def rollout_policy(self) -> RolloutPolicy:
        return RolloutPolicy.from_dict(self.policy)

    @property
    def last_step(self) -> bool:
        """Whether the ramp is at its last weight (a switch has one step)."""
        return self.mode == Mode.SWITCH or self.step >= len(self.rollout_policy.ramp) - 1


_FIELDS = frozenset(f.name for f in dataclasses.fields(ChangeRow)) - {"extra"}
_STORED = tuple(f.name for f in dataclasses.fields(ChangeRow) if f.name not in ("extra", "format"))


@dataclass(frozen=True)
class Head:
    """A target's head: its latest change, the version it serves, pin and cooldowns."""

    active: str = ""
    change_id: str = ""
    pinned: bool = False
    #: ``{"actor", "ts"}`` of the pin
    pin: dict | None = None
    #: patch hash -> until when a rolled-back patch is refused
    blocked: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict | None) -> "Head":
        data = data or {}
        return cls(active=data.get("active") or "", change_id=data.get("change_id") or "",
                   pinned=bool(data.get("pinned")), pin=data.get("pin"), blocked=dict(data.get("blocked") or {}),
                   extra={k: v for k, v in data.items() if k not in _HEAD_KEYS})

    def as_dict(self) -> dict:
        out = dict(self.extra)
        out.update(active=self.active or None, change_id=self.change_id or None, pinned=self.pinned,
                   blocked=self.blocked)
        if self.pin is not None:
            out["pin"] = self.pin
        return {k: v for k, v in out.items() if v is not None}

    def replace(self, **changes: Any) -> "Head":
        return dataclasses.replace(self, **changes)


_HEAD_KEYS = frozenset({"active", "change_id", "pinned", "pin", "blocked"})


class Rows:
    """Reads and compare-and-set writes of change rows and heads in one store."""

    def __init__(self, store: Store, on_head_change: Callable[[str], None] = lambda target: None) -> None:
        self.store = store
        self._on_head_change = on_head_change

    def head(self, target: str) -> Head:
        got = self.store.kv_get("head", target)
        return Head.from_dict(got[0] if got else None)

    def get(self, change_id: str | None) -> tuple[ChangeRow, int] | None:
        """The row and its revision, or ``None``."""
        if not change_id:
            return None
        got = self.store.kv_get("change", change_id)
        return None if got is None else (ChangeRow.from_dict(got[0]), got[1])

    def row(self, change_id: str | None) -> ChangeRow | None:
        got = self.get(change_id)
        return None if got is None else got[0]

    def latest(self, target: str) -> ChangeRow | None:
        """The change the target's head points at (in flight or finished)."""
        return self.row(self.head(target).change_id)

    def latest_with_rev(self, target: str) -> tuple[ChangeRow, int] | None:
        return self.get(self.head(target).change_id)

    def put(self, row: ChangeRow, expect_rev: int | None) -> int | None:
        """Write ``row`` if its stored revision is still ``expect_rev`` (0: a new row);
        the new revision, or ``None`` when another write came first."""
        return self.store.kv_put("change", row.id, row.as_dict(), expect_rev=expect_rev)

    def update_head(self, target: str, fn: Callable[[Head], Head]) -> Head:
        """Apply ``fn`` to the head by compare-and-set, retried on contention."""
        for _ in range(50):
            got = self.store.kv_get("head", target)
            head, rev = (Head.from_dict(got[0]), got[1]) if got else (Head(), 0)
            new = fn(head)
            if self.store.kv_put("head", target, new.as_dict(), expect_rev=rev) is not None:
                self._on_head_change(target)
                return new
        raise RuntimeError(f"could not update the head of {target!r}: too much contention")

    def all(self, target: str | None = None) -> list[ChangeRow]:
        """Every stored change (one target's, or all), oldest first."""
        rows = [ChangeRow.from_dict(v) for _, v, _ in self.store.kv_list("change")
                if target is None or v.get("target") == target]
        return sorted(rows, key=lambda r: r.created)

    def heads(self) -> list[tuple[str, Head]]:
        return [(key, Head.from_dict(value)) for key, value, _ in self.store.kv_list("head")]
