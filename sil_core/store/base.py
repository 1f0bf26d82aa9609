"""The store protocol: a small abstract core that every backend implements.

Writes are batches (``write(calls, feedback)``), applied atomically where the backend
can; reads are bounded: aggregates (:class:`~sil_core.aggregates.Cell`) for every
statistic, and windowed, limited reads of raw call records for strategies and exports.
One contract test suite (``tests/store/test_contract.py``) runs against every backend.

Feedback semantics shared by every backend (helpers below): per field (success, score)
the feedback *given* last wins (``Feedback.ts``; ``None`` is the time the store writes
it), whatever order batches arrive in; feedback for a call that is not stored yet is kept
as :class:`Pending` and folded into the record when it arrives, so the record's first
contribution to the cells already includes it. Pending feedback is bounded: older than
``pending_max_age_s`` (by when the store received it) it is never applied, and beyond
``pending_max`` entries the oldest are dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from ..aggregates import ALL_TIME, BUCKET_S, Cell, Stats, merge
from ..errors import ConfigError
from ..records import CallRecord, Feedback

__all__ = ("PENDING_MAX", "PENDING_MAX_AGE_S", "Judged", "Pending", "Store", "apply_feedback", "fold_pending",
           "merge_pending")

#: how long feedback for a call not stored yet is kept (seconds since the store received it)
PENDING_MAX_AGE_S = 86_400.0
#: how many calls' pending feedback a store keeps at most (the oldest received are dropped)
PENDING_MAX = 10_000


class Store(ABC):
    """Where call records and their aggregates live.

    Subclasses implement the abstract methods; everything else is built on them.
    ``capabilities`` names the optional abilities a backend has (``"retention"``,
    ``"rotation"``, ``"compaction"``, ``"multiprocess"``).
    """

    url: str = ""
    capabilities: frozenset[str] = frozenset()

    # -- writes ----------------------------------------------------------------------------
    @abstractmethod
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> list[CallRecord] | None:
        """Store new call records, then apply feedback, as one batch.

        Records arrive with their context already encoded as JSON text; a record whose id
        is stored already is not stored (or counted) again. Feedback for a call not stored
        yet is kept (see :class:`Pending`) and folded into the record when it arrives, in
        that batch. Per field, the feedback with the latest ``ts`` wins. Aggregates are
        updated in the same batch.

        Returns the post-write state of every record whose effective success or score
        (:attr:`CallRecord.success`, :attr:`CallRecord.effective_score`) changed in this
        batch because of feedback: stored calls that a feedback of the batch judged, and
        new calls into which feedback (pending, or of the same batch) was folded; ``[]``
        when none did. A third-party store that cannot tell returns ``None``, and the
        caller works it out from the batch itself.
        """

    # -- reads -----------------------------------------------------------------------------
    @abstractmethod
    def cells(
        self, target: str, *, version: str | None = None, since_hour: int | None = None, hist: bool = True
    ) -> dict[tuple[str, str], Cell]:
        """Summed cells per ``(version, arm)`` of a target ("" where unset).

        All-time cells when ``since_hour`` is ``None``, else the sum of the hourly cells
        from that hour (``int(ts // 3600)``) on. Cost depends on the number of versions,
        arms and hours asked for, never on the number of records. ``hist=False`` may leave
        the latency histograms empty (counts and moments only), which SQL backends answer
        with one cheap query.
        """

    @abstractmethod
    def read_calls(
        self,
        target: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        version: str | None = None,
        limit: int = 1000,
    ) -> list[CallRecord]:
        """The newest ``limit`` records matching the filters, oldest first.

        ``since``/``until`` are epoch seconds (``since`` inclusive, ``until`` exclusive).
        """

    @abstractmethod
    def get_call(self, call_id: str) -> CallRecord | None:
        """One record by id, or ``None``."""

    @abstractmethod
    def targets(self) -> list[str]:
        """Every target with at least one recorded call, sorted."""

    @abstractmethod
    def count_calls(self, target: str | None = None) -> int:
        """How many raw records the store holds (after retention), for one or all targets."""

    # -- state rows: versions, changes, target heads ---------------------------------------
    @abstractmethod
    def kv_get(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        """``(value, rev)`` of a state row, or ``None``. ``kind`` is a namespace
        (``"version"``, ``"change"``, ``"head"``); ``rev`` counts the row's writes."""

    @abstractmethod
    def kv_put(self, kind: str, key: str, value: dict[str, Any], *, expect_rev: int | None) -> int | None:
        """Compare-and-set: write ``value`` if the row's rev is ``expect_rev`` (0: the row
        must not exist; ``None``: unconditionally). Returns the new rev, or ``None`` when
        another writer got there first. This is how exactly one worker acts on a verdict."""

    @abstractmethod
    def kv_list(self, kind: str) -> list[tuple[str, dict[str, Any], int]]:
        """Every ``(key, value, rev)`` of a namespace, ordered by key."""

    # -- the trail --------------------------------------------------------------------------
    @abstractmethod
    def trail_append(self, build: Callable[[dict[str, Any] | None], dict[str, Any]]) -> dict[str, Any]:
        """Append one event atomically: ``build(last_event_or_None)`` returns the new event
        (it must carry ``seq``, ``target`` and ``hash``), computed while no other writer of
        any process can append. In the same atomic step the state row ``("trail", "head")``
        becomes ``{"seq", "hash"}`` of the new event with rev = seq (the anchor that shows a
        truncated trail). Returns the stored event."""

    @abstractmethod
    def trail_read(self, *, target: str | None = None, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events in ``seq`` order (optionally one target's, after a sequence number)."""

    def close(self) -> None:
        """Release connections and files. A closed store must not be used again."""

    # -- built on the core -----------------------------------------------------------------
    def stats(self, target: str, *, version: str | None = None, since: float | None = None) -> Stats:
        """Statistics of a target from its cells (``since`` resolves to its hour)."""
        since_hour = None if since is None else int(since // BUCKET_S)
        return Stats.from_cell(target, merge(self.cells(target, version=version, since_hour=since_hour).values()))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def merge_hours(rows: Sequence[tuple[str, str, int, Cell]], since_hour: int | None) -> dict[tuple[str, str], Cell]:
    """Fold ``(version, arm, hour, cell)`` rows into per-(version, arm) sums (helper for backends)."""
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


# -- feedback semantics shared by the backends ------------------------------------------------
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

    def as_feedback(self) -> list[Feedback]:
        """The pending fields as feedback, each with the time it was given."""
        out = []
        if self.success is not None:
            out.append(Feedback(self.call_id, success=self.success, ts=self.success_ts))
        if self.score is not None:
            out.append(Feedback(self.call_id, score=self.score, ts=self.score_ts))
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
    if (fs, fs_ts, sc, sc_ts) == (record.feedback_success, record.feedback_success_ts,
                                  record.feedback_score, record.feedback_score_ts):
        return record
    return replace(record, feedback_success=fs, feedback_score=sc, feedback_success_ts=fs_ts, feedback_score_ts=sc_ts)


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
        self._before.setdefault(record.id, (record.success, record.effective_score))

    def now(self, record: CallRecord) -> None:
        """The record's state after (part of) the batch."""
        self._after[record.id] = record

    def changed(self) -> list[CallRecord]:
        before = self._before
        return [r for cid, r in self._after.items()
                if cid in before and (r.success, r.effective_score) != before[cid]]


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
