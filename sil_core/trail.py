"""The trail: an append-only, hash-chained log of every decision (not of every call).

Each event holds the hash of the one before it (``prev_hash``) and its own ``hash``, the
SHA-256 of its canonical JSON; the store keeps a head anchor (last ``seq`` and ``hash``)
in the same transaction. :func:`verify_trail` recomputes the chain and finds any edited,
deleted, inserted or reordered event, and a truncated tail. Anchor the head hash that
``sil trail verify`` prints somewhere else to also catch a rewrite of the whole chain.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ._internal.jsonsafe import bounded
from ._internal.validate import safe_text, safe_texts
from .digest import canonical_json, digest
from .records import format_ts
from .store.base import Store

__all__ = ("EVENT_TYPES", "GENESIS", "TrailReport", "append_event", "verify_trail")

GENESIS = "0" * 64
EVENT_TYPES = (
    "change_proposed", "change_rejected", "change_applied", "arm_weight_changed", "verdict",
    "rollback_started", "rollback_succeeded", "restore_failed", "promoted", "paused", "resumed",
    "pinned", "unpinned", "reverted", "config_backup", "rollback_recorded", "version_adopted", "watch_regressed", "strategy_error", "strategy_decision", "notifier_error", "adapter_error", "failure_trigger",
)


def event_hash(event: dict[str, Any]) -> str:
    """SHA-256 of the event's canonical JSON without its own ``hash`` (see ``digest.py``)."""
    return digest({k: v for k, v in event.items() if k != "hash"})


def append_event(store: Store, type: str, target: str | None, *, change_id: str | None = None,
                 actor: str = "guard", **data: Any) -> dict[str, Any]:
    """Append a typed event to the store's trail and return it."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown trail event type {type!r}")
    # bounded, JSON-clean, text UTF-8 (a lone surrogate in a reason becomes U+FFFD), as it will be hashed
    payload = json.loads(canonical_json(safe_texts(bounded(data))))
    target, actor = safe_text(target), safe_text(actor)
    now = time.time()

    def build(last: dict[str, Any] | None) -> dict[str, Any]:
        event = {
            "seq": last["seq"] + 1 if last else 1,
            "ts": format_ts(now),
            "type": type,
            "target": target,
            "change_id": change_id,
            "actor": actor,
            "data": payload,
            "prev_hash": last["hash"] if last else GENESIS,
        }
        event["hash"] = event_hash(event)
        return event

    return store.trail_append(build)


@dataclass
class TrailReport:
    """What :func:`verify_trail` found: ``ok`` when ``problems`` is empty."""

    events: int
    head_seq: int
    head_hash: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_trail(store: Store) -> TrailReport:
    """Check the whole chain and the head anchor."""
    events = store.trail_read()
    problems: list[str] = []
    prev_hash, expected_seq = GENESIS, 1
    for event in events:
        seq = event.get("seq")
        if seq != expected_seq:
            problems.append(f"seq {seq}: expected seq {expected_seq} (an event was deleted, inserted or moved)")
        if event.get("prev_hash") != prev_hash:
            problems.append(f"seq {seq}: prev_hash does not match the event before it (deleted, inserted or reordered)")
        if event_hash(event) != event.get("hash"):
            problems.append(f"seq {seq}: hash does not match its content (edited)")
        prev_hash = event.get("hash", "")
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
    head = store.kv_get("trail", "head")
    last_seq = events[-1]["seq"] if events else 0
    last_hash = events[-1].get("hash", "") if events else GENESIS
    if head is None:
        if events:
            problems.append("the head anchor is missing")
    elif head[0].get("seq") != last_seq or head[0].get("hash") != last_hash:
        problems.append(f"the head anchor says seq {head[0].get('seq')}, the trail ends at seq {last_seq} (truncated or rewritten)")
    return TrailReport(len(events), last_seq, last_hash, problems)
