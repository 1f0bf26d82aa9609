"""The store protocol: a small abstract core that every backend implements.

Writes are batches (``write(calls, feedback)``), applied atomically where the backend
can; reads are bounded: aggregates (:class:`~sil_core.aggregates.Cell`) for every
statistic, and windowed, limited reads of raw call records for strategies and exports.
One contract test suite (``tests/store/test_contract.py``) runs against every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from ..aggregates import ALL_TIME, BUCKET_S, Cell, Stats, merge
from ..records import CallRecord, Feedback

__all__ = ("Store",)


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
    def write(self, calls: Sequence[CallRecord], feedback: Sequence[Feedback] = ()) -> None:
        """Store new call records, then apply feedback, as one batch.

        Records arrive with their context already encoded as JSON text. Feedback for an
        unknown call id is ignored. Aggregates are updated in the same batch.
        """

    # -- reads -----------------------------------------------------------------------------
    @abstractmethod
    def cells(
        self, target: str, *, version: str | None = None, since_hour: int | None = None
    ) -> dict[tuple[str, str], Cell]:
        """Summed cells per ``(version, arm)`` of a target ("" where unset).

        All-time cells when ``since_hour`` is ``None``, else the sum of the hourly cells
        from that hour (``int(ts // 3600)``) on. Cost depends on the number of versions,
        arms and hours asked for, never on the number of records.
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
