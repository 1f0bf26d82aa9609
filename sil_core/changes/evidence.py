"""A change's evidence: the calls each arm served since it started, read from the cells.

Cells are cumulative, so a change remembers each arm's cell at its start (a snapshot) and
subtracts it; a switch-mode change has no live baseline and compares with the baseline
version's cell over a window frozen when the switch happened.
"""

from __future__ import annotations

from ..aggregates import BUCKET_S, Cell, merge
from ..policy import RolloutPolicy
from ..rollout import Arm, Mode
from ..store.base import Store
from .rows import ChangeRow

__all__ = ("arms", "dump_cell", "frozen_baseline", "load_cell")


def dump_cell(cell: Cell | None) -> list | None:
    """A cell as JSON (what a change row stores): values, histogram, and its metrics'
    moments when it has any (rows written before metrics have two elements)."""
    if cell is None:
        return None
    out = [list(cell.values()), {str(b): n for b, n in cell.hist.items()}]
    if cell.metrics:
        out.append({name: list(m) for name, m in cell.metrics.items()})
    return out


def load_cell(data: list | None) -> Cell:
    if not data:
        return Cell()
    values, hist = data[0], data[1]
    metrics = data[2] if len(data) > 2 and isinstance(data[2], dict) else None
    return Cell.from_values(values, {int(b): n for b, n in hist.items()}, metrics)


def arms(store: Store, row: ChangeRow) -> tuple[Cell, Cell]:
    """``(baseline, candidate)`` cells of a change: its own calls only."""
    cells = store.cells(row.target)
    cand = (cells.get((row.candidate_version, Arm.CANDIDATE)) or Cell()).copy()
    cand.add(load_cell(row.snapshot_candidate), -1)
    if row.mode == Mode.SWITCH:
        return load_cell(row.frozen_baseline), cand
    base = (cells.get((row.baseline_version, Arm.BASELINE)) or Cell()).copy()
    base.add(load_cell(row.snapshot_baseline), -1)
    return base, cand


def frozen_baseline(store: Store, target: str, version: str, policy: RolloutPolicy, *, now: float,
                    unversioned: bool = False) -> list | None:
    """The baseline version's calls over ``baseline_window_hours`` (all time if that holds
    fewer than ``min_calls``), as a dumped cell."""
    # calls recorded before the target had any version carry version "" (aggregates key)
    versions = (version, "") if unversioned else (version,)

    def window(since_hour: int | None) -> Cell:
        return merge([c for v in versions for c in store.cells(target, version=v, since_hour=since_hour).values()])

    frozen = window(int((now - policy.baseline_window_hours * 3600) // BUCKET_S))
    if frozen.successes + frozen.failures < policy.min_calls:
        frozen = window(None)
    return dump_cell(frozen)
