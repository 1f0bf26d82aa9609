"""Evidence that late feedback cannot fool: settled evidence before a promotion, and a watch
after it.

Feedback (a thumbs-down, a check, an evaluator) can arrive seconds or minutes after the
call it judges. Two rules keep a harmful change from being promoted, or staying promoted,
on the strength of calls nobody has judged yet:

* **Settled evidence** (``RolloutPolicy.feedback_window_s``): a promotion is decided on the
  calls older than the window only: the contributions of the arms' calls of the last
  ``feedback_window_s`` seconds are read back and taken out of the cells. If they cannot
  all be read (more than ``SETTLE_READ_MAX`` calls in the window), the promotion waits.
* **The watch** (``RolloutPolicy.watch_hours``): after a promotion, the promoted version's
  calls (the canary's candidate arm, with the feedback that keeps arriving on it, plus every
  call since the promotion) are judged against the change's baseline, with the same
  anytime-valid test, until the watch ends; a regression is alerted once (trail event
  ``watch_regressed``, notifiers, the ``sil_core`` logger) and, with
  ``on_watch_regression="revert"``, the baseline is restored through the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aggregates import Cell, contribution
from .rollout import Arm, Mode

if TYPE_CHECKING:
    from .changes.rows import ChangeRow

__all__ = ("SETTLE_READ_MAX", "post_promotion", "settled")

#: calls in the feedback window that a settled verdict reads back at most
SETTLE_READ_MAX = 20_000


def settled(store: Any, row: "ChangeRow", base: Cell, cand: Cell, window_s: float,
            *, now: float) -> tuple[Cell, Cell] | None:
    """``(baseline, candidate)`` without the calls of the last ``window_s`` seconds (their
    feedback may not have arrived), or ``None`` when the window holds too many calls to
    read back."""
    since = now - window_s
    base, cand = base.copy(), cand.copy()
    for version, arm, cell in ((row.baseline_version, Arm.BASELINE, base), (row.candidate_version, Arm.CANDIDATE, cand)):
        if row.mode == Mode.SWITCH and arm == Arm.BASELINE:
            continue  # a frozen window from before the change: nothing recent in it
        recent = store.read_calls(row.target, since=since, version=version or None, limit=SETTLE_READ_MAX + 1)
        if len(recent) > SETTLE_READ_MAX:
            return None
        for record in recent:
            if record.arm == arm and record.ts >= row.started:
                cell.add(contribution(record), -1)
    return base, cand


def post_promotion(cells: dict[tuple[str, str], Cell], row: "ChangeRow") -> Cell:
    """The promoted version's calls since its promotion (served without an arm)."""
    now = (cells.get((row.candidate_version, "")) or Cell()).copy()
    if row.snapshot_promoted:
        values, hist = row.snapshot_promoted
        now.add(Cell.from_values(values, {int(b): n for b, n in hist.items()}), -1)
    return now
