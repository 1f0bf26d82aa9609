"""``memory://``: a process-local store for tests and short scripts.

Raw records are kept in a bounded, insertion-ordered map (oldest evicted first,
``max_calls`` in all); aggregates are never evicted. Feedback for a call not stored yet
waits in a map of :class:`~sil_core.store._common.Pending` entries: one received more than
``pending_max_age_s`` ago is never applied, and whenever feedback is added to the map the
expired entries and the oldest beyond ``pending_max`` are dropped.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from typing import Sequence

from ..aggregates import Cell, CellKey, cells_for, feedback_delta
from ..records import CallRecord, Feedback
from ._common import (  # matches, retained: re-exported, once defined here
    Judged,
    Pending,
    apply_feedback,
    fold_pending,
    matches,
    merge_cells,
    merge_pending,
    pending_bounds,
    prune_order,
    retained,
)
from ._table import CellTable
from .base import PENDING_MAX, PENDING_MAX_AGE_S, Store

__all__ = ("MemoryStore", "apply_feedback")


class MemoryStore(Store):
    """Everything in this process's memory; nothing survives it."""

    capabilities = frozenset({"retention"})

    def __init__(self, *, max_calls: int = 100_000, pending_max_age_s: float = PENDING_MAX_AGE_S,
                 pending_max: int = PENDING_MAX) -> None:
        self.url = "memory://"
        self.max_calls = max_calls
        self.pending_max_age_s, self.pending_max = pending_bounds(pending_max_age_s, pending_max)
        self._calls: OrderedDict[str, CallRecord] = OrderedDict()
        self._pending: dict[str, Pending] = {}
        self._table = CellTable()
        self._lock = threading.Lock()
        self._kv: dict[tuple[str, str], tuple[dict, int]] = {}
        self._trail: list[dict] = []

    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> list[CallRecord]:
        now = time.time()
        judged = Judged()
        with self._lock:
            pending = self._pending
            cutoff = now - self.pending_max_age_s
            fresh = []
            deltas: dict[CellKey, Cell] = {}
            for record in {r.id: r for r in calls}.values():
                if record.id in self._calls:
                    continue  # stored already: a retried batch must not count twice
                judged.known(record)
                waiting = pending.pop(record.id, None)
                if waiting is not None and waiting.received >= cutoff:
                    record = fold_pending(record, waiting)
                    judged.now(record)
                self._calls[record.id] = record
                fresh.append(record)
            merge_cells(deltas, cells_for(fresh))
            added = False
            for fb in feedback:
                before = self._calls.get(fb.call_id)
                if before is None:
                    waiting = pending.get(fb.call_id)
                    pending[fb.call_id] = merge_pending(waiting if waiting and waiting.received >= cutoff else None, fb, now)
                    added = True
                    continue
                judged.known(before)
                after = apply_feedback(before, fb, now)
                if after is not before:
                    self._calls[fb.call_id] = after
                    merge_cells(deltas, feedback_delta(before, after))
                    judged.now(after)
            self._table.apply(deltas)
            if added:
                _, dropped = prune_order(pending.values(), cutoff, self.pending_max)
                for cid in dropped:
                    del pending[cid]
            while len(self._calls) > self.max_calls:
                self._calls.popitem(last=False)
        return judged.changed()

    def cells(self, target: str, *, version: str | None = None, since_hour: int | None = None,
              hist: bool = True) -> dict[tuple[str, str], Cell]:
        with self._lock:
            return self._table.read(target, version, since_hour)

    def read_calls(self, target=None, *, since=None, until=None, version=None, limit=1000) -> list[CallRecord]:
        with self._lock:
            rows = [r for r in self._calls.values() if matches(r, target, since, until, version)]
        rows.sort(key=lambda r: (r.ts, r.id))
        return rows[-limit:] if limit else []

    def get_call(self, call_id: str) -> CallRecord | None:
        with self._lock:
            return self._calls.get(call_id)

    def targets(self) -> list[str]:
        with self._lock:
            return self._table.targets()

    def count_calls(self, target: str | None = None) -> int:
        with self._lock:
            if target is None:
                return len(self._calls)
            return sum(1 for r in self._calls.values() if r.target == target)

    def kv_get(self, kind: str, key: str):
        with self._lock:
            row = self._kv.get((kind, key))
        return None if row is None else (copy.deepcopy(row[0]), row[1])

    def kv_put(self, kind: str, key: str, value: dict, *, expect_rev: int | None) -> int | None:
        with self._lock:
            rev = self._kv.get((kind, key), (None, 0))[1]
            if expect_rev is not None and rev != expect_rev:
                return None
            self._kv[(kind, key)] = (copy.deepcopy(value), rev + 1)
            return rev + 1

    def kv_list(self, kind: str):
        with self._lock:
            rows = [(k, copy.deepcopy(v), r) for (kd, k), (v, r) in self._kv.items() if kd == kind]
        return sorted(rows, key=lambda row: row[0])

    def trail_append(self, build):
        with self._lock:
            event = build(copy.deepcopy(self._trail[-1]) if self._trail else None)
            self._trail.append(copy.deepcopy(event))
            self._kv[("trail", "head")] = ({"seq": event["seq"], "hash": event["hash"]}, event["seq"])
            return event

    def trail_read(self, *, target=None, after_seq=0, limit=None):
        with self._lock:
            rows = [copy.deepcopy(e) for e in self._trail if e["seq"] > after_seq and (target is None or e.get("target") == target)]
        return rows[:limit] if limit is not None else rows

    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None, now: float | None = None) -> int:
        """Drop records older than ``max_age_s`` and beyond the newest ``max_calls`` per target."""
        now = time.time() if now is None else now
        with self._lock:
            keep = retained(list(self._calls.values()), max_age_s, max_calls, now)
            removed = len(self._calls) - len(keep)
            self._calls = OrderedDict((r.id, r) for r in sorted(keep, key=lambda r: (r.ts, r.id)))
        return removed

