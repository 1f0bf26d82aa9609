"""Helpers every backend shares (internal: import them from here, not from a backend).

- Feedback semantics: :class:`Pending`, :func:`apply_feedback`, :func:`fold_pending`,
  :func:`merge_pending`, :class:`Judged`, :func:`prune_order`, :func:`pending_bounds`.
- Cell deltas: :func:`merge_cells` adds a batch's increments per
  ``(target, version, arm, hour)`` key (hourly and all-time keys alike, as
  :func:`~sil_core.aggregates.cells_for` and :func:`~sil_core.aggregates.feedback_delta`
  produce them); :func:`merge_hours` folds stored rows into per-(version, arm) sums.
- Raw reads and retention of stores that hold records in Python: :func:`matches`,
  :func:`retained`.
- Metrics as stored text or JSON: :func:`dump_json`, and the lenient readers
  :func:`load_metrics`, :func:`load_late_metrics`, :func:`load_moments` (a bad or
  non-finite entry of an old or odd row is dropped, never raised).

Per field (success, score) the feedback *given* last wins (``Feedback.ts``; ``None`` is
the time the store writes it), whatever order batches arrive in; feedback for a call that
is not stored yet is kept as :class:`Pending` and folded into the record when it arrives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from ..aggregates import ALL_TIME, Cell, CellKey
from ..errors import ConfigError
from ..records import CallRecord, Feedback

__all__ = (
    "Judged", "Pending", "apply_feedback", "dump_json", "fold_pending", "load_late_metrics", "load_metrics",
    "load_moments", "matches", "merge_cells", "merge_hours", "merge_pending", "moments", "pending_bounds",
    "prune_order", "retained",
)


# -- cell deltas -------------------------------------------------------------------------------
def merge_cells(into: dict[CellKey, Cell], deltas: Mapping[CellKey, Cell]) -> dict[CellKey, Cell]:
    """Add ``deltas`` into ``into`` key by key (a key new to ``into`` gets a copy, so the
    caller's cells are never shared); returns ``into``.

    The one way a batch's increments are combined: the records' contributions
    (``cells_for``) and each feedback's difference (``feedback_delta``), every one keyed by
    its hour and by the all-time hour ``ALL_TIME``.
    """
    for key, cell in deltas.items():
        mine = into.get(key)
        if mine is None:
            into[key] = cell.copy()
        else:
            mine.add(cell)
    return into


def merge_hours(rows: Sequence[tuple[str, str, int, Cell]], since_hour: int | None) -> dict[tuple[str, str], Cell]:
    """Fold ``(version, arm, hour, cell)`` rows into per-(version, arm) sums: the all-time
    rows when ``since_hour`` is ``None``, else the hourly rows from that hour on."""
    out: dict[tuple[str, str], Cell] = {}
    for version, arm, hour, cell in rows:
        if since_hour is None:
            if hour != ALL_TIME:
                continue
        elif hour == ALL_TIME or hour < since_hour:
            continue
        key = (version, arm)
        if key in out:
            out[key].add(cell)
        else:
            out[key] = cell.copy()
    return out


# -- metrics as stored ---------------------------------------------------------------------------
def dump_json(value: Any) -> str | None:
    """Compact JSON text of metrics, late metric values or moments; ``None`` when empty."""
    return json.dumps(value, separators=(",", ":")) if value else None


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _entries(value: Any) -> Iterable[tuple[str, Any]]:
    """The ``(name, item)`` pairs of a stored mapping (JSON text or a dict); none if malformed."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return ()
    return [(k, v) for k, v in value.items() if isinstance(k, str)] if isinstance(value, dict) else ()


def load_metrics(value: Any) -> dict[str, float] | None:
    """A call's stored metrics: name -> finite float (``None`` when none is left)."""
    out = {name: v for name, item in _entries(value) if (v := _finite(item)) is not None}
    return out or None


def load_late_metrics(value: Any) -> dict[str, list] | None:
    """Stored late metric values: name -> ``[finite value, ts or None]``."""
    out = {}
    for name, item in _entries(value):
        if isinstance(item, list) and len(item) == 2 and (v := _finite(item[0])) is not None:
            out[name] = [v, _finite(item[1])]
    return out or None


def load_moments(value: Any) -> dict[str, list] | None:
    """Stored per-metric moments (``sil_core.metrics.MOMENTS``), counts as ints."""
    out = {name: m for name, item in _entries(value) if isinstance(item, list) and (m := moments(item))}
    return out or None


def moments(values: Sequence) -> list | None:
    """Six stored moments as a cell holds them, or ``None`` when malformed or empty (n = 0)."""
    if len(values) != 6:
        return None
    m = [_finite(x) for x in values]
    if None in m or not (m[0] or m[3]):
        return None
    return [int(m[0]), m[1], m[2], int(m[3]), m[4], m[5]]


# -- raw records held in Python (memory, JSONL) ---------------------------------------------------
def matches(r: CallRecord, target, since, until, version) -> bool:
    """Whether a record passes :meth:`Store.read_calls`'s filters."""
    return (
        (target is None or r.target == target)
        and (since is None or r.ts >= since)
        and (until is None or r.ts < until)
        and (version is None or r.version == version)
    )


def retained(records: list[CallRecord], max_age_s, max_calls, now: float) -> list[CallRecord]:
    """The records a retention policy keeps: none older than ``max_age_s`` before ``now``,
    and the newest ``max_calls`` per target."""
    if max_age_s is not None:
        records = [r for r in records if r.ts >= now - max_age_s]
    if max_calls is not None:
        by_target: dict[str, list[CallRecord]] = {}
        for r in records:
            by_target.setdefault(r.target, []).append(r)
        records = []
        for rows in by_target.values():
            rows.sort(key=lambda r: (r.ts, r.id))
            records.extend(rows[-max_calls:] if max_calls > 0 else [])
    return records


# -- feedback semantics -------------------------------------------------------------------------
@dataclass(slots=True)
class Pending:
    """Feedback kept for a call that is not stored yet: per field, the value given last
    and when it was given, and when the store last received feedback for it (``received``,
    the clock of the pruning bound)."""

    call_id: str
    success: bool | None = None
    success_ts: float | None = None
    score: float | None = None
    score_ts: float | None = None
    received: float = 0.0
    #: metric name -> ``[value, ts given]``
    metrics: dict[str, list] | None = None

    def as_feedback(self) -> list[Feedback]:
        """The pending fields as feedback, each with the time it was given."""
        out = []
        if self.success is not None:
            out.append(Feedback(self.call_id, success=self.success, ts=self.success_ts))
        if self.score is not None:
            out.append(Feedback(self.call_id, score=self.score, ts=self.score_ts))
        for name, (value, ts) in (self.metrics or {}).items():
            out.append(Feedback(self.call_id, ts=ts, metrics={name: value}))
        return out


def _replaces(ts: float | None, value: Any, value_ts: float | None) -> bool:
    """Whether a field given at ``ts`` replaces ``value`` given at ``value_ts``: an unset
    field, or one of unknown time (written before feedback had one) is replaced; else the
    later wins, and on a tie the one written last."""
    return value is None or ts is None or value_ts is None or ts >= value_ts


def apply_feedback(record: CallRecord, fb: Feedback, now: float | None = None) -> CallRecord:
    """The record with the feedback's fields set where they are newer than the record's
    (``None`` fields leave it unchanged). ``now`` stands for ``fb.ts`` when that is
    ``None``; with neither, the feedback applies in the order it comes (old JSONL lines)."""
    ts = fb.ts if fb.ts is not None else now
    fs, fs_ts = record.feedback_success, record.feedback_success_ts
    sc, sc_ts = record.feedback_score, record.feedback_score_ts
    if fb.success is not None and _replaces(ts, fs, fs_ts):
        fs, fs_ts = bool(fb.success), ts
    if fb.score is not None and _replaces(ts, sc, sc_ts):
        sc, sc_ts = float(fb.score), ts
    fm = _merge_metrics(record.feedback_metrics, fb.metrics, ts)
    if (fs, fs_ts, sc, sc_ts, fm) == (record.feedback_success, record.feedback_success_ts,
                                      record.feedback_score, record.feedback_score_ts, record.feedback_metrics):
        return record
    return replace(record, feedback_success=fs, feedback_score=sc, feedback_success_ts=fs_ts, feedback_score_ts=sc_ts,
                   feedback_metrics=fm)


def _merge_metrics(current: dict[str, list] | None, given: dict[str, float] | None,
                   ts: float | None) -> dict[str, list] | None:
    """``current`` late metric values with ``given`` (at ``ts``) merged in, newer winning
    per name; ``current`` itself when nothing changes."""
    if not given:
        return current
    out = dict(current) if current else {}
    for name, value in given.items():
        old = out.get(name)
        if old is None or _replaces(ts, old[0], old[1]):
            out[name] = [float(value), ts]
    return out if out != current else current


def fold_pending(record: CallRecord, pending: Pending | None) -> CallRecord:
    """The record with its pending feedback folded in (newer fields win, as for feedback)."""
    if pending is not None:
        for fb in pending.as_feedback():
            record = apply_feedback(record, fb)
    return record


def merge_pending(pending: Pending | None, fb: Feedback, now: float) -> Pending:
    """``pending`` (or a new entry) with one more feedback merged in, received ``now``."""
    out = Pending(fb.call_id) if pending is None else replace(pending)
    ts = fb.ts if fb.ts is not None else now
    if fb.success is not None and _replaces(ts, out.success, out.success_ts):
        out.success, out.success_ts = bool(fb.success), ts
    if fb.score is not None and _replaces(ts, out.score, out.score_ts):
        out.score, out.score_ts = float(fb.score), ts
    out.metrics = _merge_metrics(out.metrics, fb.metrics, ts)
    out.received = max(out.received, now)
    return out


class Judged:
    """Tracks which records of a batch feedback changed (what :meth:`Store.write` returns):
    each record's effective success and score as the caller knew it, and its final state."""

    def __init__(self) -> None:
        self._before: dict[str, tuple] = {}
        self._after: dict[str, CallRecord] = {}

    def known(self, record: CallRecord) -> None:
        """The state the caller knew (a new record as given, a stored one before the batch)."""
        self._before.setdefault(record.id, (record.success, record.effective_score, record.effective_metrics))

    def now(self, record: CallRecord) -> None:
        """The record's state after (part of) the batch."""
        self._after[record.id] = record

    def changed(self) -> list[CallRecord]:
        before = self._before
        return [r for cid, r in self._after.items()
                if cid in before and (r.success, r.effective_score, r.effective_metrics) != before[cid]]


def prune_order(pending: Iterable[Pending], cutoff: float, limit: int) -> tuple[list[Pending], set[str]]:
    """``(kept, dropped ids)``: entries received before ``cutoff`` are dropped, then the
    oldest received beyond ``limit``."""
    kept = sorted(pending, key=lambda p: (p.received, p.call_id))
    dropped = {p.call_id for p in kept if p.received < cutoff}
    kept = [p for p in kept if p.call_id not in dropped]
    if len(kept) > limit:
        dropped.update(p.call_id for p in kept[: len(kept) - limit])
        kept = kept[len(kept) - limit :]
    return kept, dropped


def pending_bounds(max_age_s: float, max_count: int) -> tuple[float, int]:
    """Validated ``(pending_max_age_s, pending_max)`` of a backend's constructor."""
    if isinstance(max_age_s, bool) or not isinstance(max_age_s, (int, float)) or not max_age_s > 0:
        raise ConfigError(f"pending_max_age_s must be a positive number, not {max_age_s!r}")
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0:
        raise ConfigError(f"pending_max must be an int >= 0, not {max_count!r}")
    return float(max_age_s), max_count
