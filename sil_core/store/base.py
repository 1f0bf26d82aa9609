"""The store protocol: a small abstract core that every backend implements.

Writes are batches (``write(calls, feedback)``), applied atomically where the backend
can; reads are bounded: aggregates (:class:`~sil_core.aggregates.Cell`) for every
statistic, and windowed, limited reads of raw call records for strategies and exports.
One contract test suite (:class:`sil_core.testing.StoreContract`) runs against every
backend, ours and third-party ones.

Feedback semantics shared by every backend (helpers in :mod:`sil_core.store._common`): per field (success,
score, each metric) the feedback *given* last wins (``Feedback.ts``; ``None`` is the time the store writes
it), whatever order batches arrive in; feedback for a call that is not stored yet is kept
as :class:`Pending` and folded into the record when it arrives, so the record's first
contribution to the cells already includes it. Pending feedback is bounded: older than
``pending_max_age_s`` (by when the store received it) it is never applied, and beyond
``pending_max`` entries the oldest are dropped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

from ..aggregates import BUCKET_S, Cell, Stats, merge
from ..records import CallRecord, Feedback

# the shared helpers live in ._common; re-exported here, where they used to be defined
from ._common import (  # noqa: F401
    Judged,
    Pending,
    apply_feedback,
    fold_pending,
    merge_hours,
    merge_pending,
    pending_bounds,
    prune_order,
)

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

        Returns the post-write state of every record whose effective success, score or
        metrics (:attr:`CallRecord.success`, :attr:`CallRecord.effective_score`,
        :attr:`CallRecord.effective_metrics`) changed in this
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
        from that hour (``int(ts // 3600)``) on, each with its metrics' moments
        (:attr:`Cell.metrics`). Cost depends on the number of versions,
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

    # -- optional abilities (named in ``capabilities``) ----------------------------------------
    def retain(self, *, max_age_s: float | None = None, max_calls: int | None = None,
               now: float | None = None) -> int:
        """Delete raw records older than ``max_age_s`` seconds before ``now`` (default: the
        current time) and beyond the newest ``max_calls`` per target; returns how many
        records were deleted. Aggregates already counted stay (all-time cells always;
        hourly cells older than the age cutoff may go).

        Only stores whose ``capabilities`` include ``"retention"`` implement it; callers
        check that first. This default raises :class:`NotImplementedError`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no retention (\"retention\" is not in its capabilities)"
        )

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
