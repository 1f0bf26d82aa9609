"""An in-memory table of cells, shared by the memory and JSONL backends."""

from __future__ import annotations

from ..aggregates import ALL_TIME, Cell, CellKey
from ._common import merge_hours


class CellTable:
    """``CellKey -> Cell`` with increment, windowed reads and pruning of old hours."""

    def __init__(self) -> None:
        self.cells: dict[CellKey, Cell] = {}
        # target -> set of keys, so reads cost the target's cells, not the table's; the
        # all-time keys apart, so a whole-history read does not walk the hourly cells
        self._by_target: dict[str, set[CellKey]] = {}
        self._all_time: dict[str, set[CellKey]] = {}

    def apply(self, deltas: dict[CellKey, Cell]) -> None:
        for key, delta in deltas.items():
            cell = self.cells.get(key)
            if cell is None:
                self.cells[key] = delta.copy()
                self._by_target.setdefault(key[0], set()).add(key)
                if key[3] == ALL_TIME:
                    self._all_time.setdefault(key[0], set()).add(key)
            else:
                cell.add(delta)

    def read(self, target: str, version: str | None, since_hour: int | None) -> dict[tuple[str, str], Cell]:
        keys = self._all_time.get(target, ()) if since_hour is None else self._by_target.get(target, ())
        rows = [(k[1], k[2], k[3], self.cells[k]) for k in keys if version is None or k[1] == version]
        return merge_hours(rows, since_hour)

    def targets(self) -> list[str]:
        return sorted(t for t, keys in self._by_target.items() if keys)

    def prune_hours(self, before_hour: int) -> int:
        """Drop hourly cells older than ``before_hour`` (all-time cells stay)."""
        old = [k for k in self.cells if k[3] != ALL_TIME and k[3] < before_hour]
        for key in old:
            del self.cells[key]
            self._by_target[key[0]].discard(key)
        return len(old)

    def to_rows(self) -> list[list]:
        return [[*k, list(c.values()), {str(b): n for b, n in c.hist.items()}] for k, c in self.cells.items()]

    @classmethod
    def from_rows(cls, rows: list[list]) -> "CellTable":
        table = cls()
        for target, version, arm, hour, values, hist in rows:
            table.apply({(target, version, arm, int(hour)): Cell.from_values(values, {int(b): n for b, n in hist.items()})})
        return table
