"""Incremental aggregates per (target, version, arm, hour): the only thing stats read.

A :class:`Cell` sums the calls of one key: counts per outcome, effective successes and
failures (late feedback included), log-latency moments and a log-spaced histogram of
successful calls' latencies (quantiles within about 4.4 %), and score moments. Cells add
and subtract, so a store keeps them up to date with increments (a batch of new calls, or
the difference a piece of feedback makes) and never re-reads history (seed bug B1/§5.4).

Every call lands in two cells: its hour (``hour = ts // 3600``) for windowed questions,
and the all-time cell (``hour = ALL_TIME``) so that whole-history stats cost one row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from .metrics import MetricStats, add_moments, add_value
from .records import CallRecord, Outcome

__all__ = ("ALL_TIME", "BUCKET_S", "Cell", "CellKey", "Stats", "cells_for", "feedback_delta", "wilson")

BUCKET_S = 3600
ALL_TIME = -1
#: histogram resolution: bins per doubling of latency (bin width ~9 %, error <= ~4.4 %)
BINS_PER_OCTAVE = 8
_MIN_LATENCY = 1e-7
_BIN_SCALE = BINS_PER_OCTAVE / math.log(2)  # natural log -> bin index

# (target, version or "", arm or "", hour or ALL_TIME)
CellKey = tuple[str, str, str, int]

#: numeric fields of a Cell, in storage column order
FIELDS = (
    "n", "n_ok", "n_error", "n_interrupted", "n_cancelled", "n_blocked",
    "successes", "failures",
    "lat_n", "lat_sum", "lat_sumsq",
    "score_n", "score_sum", "score_sumsq",
    "n_retried",
)
_OUTCOME_FIELD = {
    Outcome.OK: "n_ok", Outcome.ERROR: "n_error", Outcome.INTERRUPTED: "n_interrupted",
    Outcome.CANCELLED: "n_cancelled", Outcome.BLOCKED: "n_blocked",
    Outcome.RETRIED: "n_error",  # an attempt error, not a failure of the task (no ``failures``)
}


@dataclass(slots=True)
class Cell:
    """Summed evidence for one key (see module docstring)."""

    n: int = 0
    n_ok: int = 0
    n_error: int = 0
    n_interrupted: int = 0
    n_cancelled: int = 0
    n_blocked: int = 0
    successes: int = 0
    failures: int = 0
    lat_n: int = 0
    lat_sum: float = 0.0
    lat_sumsq: float = 0.0
    score_n: int = 0
    score_sum: float = 0.0
    score_sumsq: float = 0.0
    #: attempts a framework ran again (``Outcome.RETRIED``), also counted in ``n_error``;
    #: added in storage format 2, so cells written before hold 0
    n_retried: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    #: metric name -> its moments (``sil_core.metrics.MOMENTS``)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: "Cell", sign: int = 1) -> "Cell":
        """Add (or with ``sign=-1`` subtract) ``other`` into this cell; returns self."""
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))
        hist = self.hist
        for b, c in other.hist.items():
            v = hist.get(b, 0) + sign * c
            if v:
                hist[b] = v
            else:
                hist.pop(b, None)
        if other.metrics:
            add_moments(self.metrics, other.metrics, sign)
        return self

    def is_zero(self) -> bool:
        return not self.hist and not self.metrics and all(not getattr(self, name) for name in FIELDS)

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name in FIELDS)

    @classmethod
    def from_values(cls, values: Iterable, hist: dict[int, int] | None = None,
                    metrics: dict[str, list[float]] | None = None) -> "Cell":
        cell = cls(*values)
        if hist:
            cell.hist = dict(hist)
        if metrics:
            cell.metrics = {name: list(m) for name, m in metrics.items()}
        return cell

    def copy(self) -> "Cell":
        return Cell.from_values(self.values(), self.hist, self.metrics)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of successful calls' latency, from the histogram."""
        total = sum(self.hist.values())
        if total <= 0:
            return None
        rank = q * total
        seen = 0
        for b in sorted(self.hist):
            seen += self.hist[b]
            if seen >= rank:
                return 2.0 ** ((b + 0.5) / BINS_PER_OCTAVE)
        return 2.0 ** ((max(self.hist) + 0.5) / BINS_PER_OCTAVE)


def add_record(cell: Cell, record: CallRecord) -> None:
    """Add one record's contribution to ``cell`` in place (the hot loop of every write)."""
    cell.n += 1
    field_name = _OUTCOME_FIELD.get(record.outcome, "n_error")
    setattr(cell, field_name, getattr(cell, field_name) + 1)
    if record.outcome == Outcome.RETRIED:
        cell.n_retried += 1
    success = record.success
    if success is True:
        cell.successes += 1
        d = record.duration_s if record.duration_s > _MIN_LATENCY else _MIN_LATENCY
        log_d = math.log(d)
        cell.lat_n += 1
        cell.lat_sum += log_d
        cell.lat_sumsq += log_d * log_d
        b = math.floor(log_d * _BIN_SCALE)
        cell.hist[b] = cell.hist.get(b, 0) + 1
    elif success is False:
        cell.failures += 1
    score = record.effective_score
    if score is not None:
        s = float(score)
        cell.score_n += 1
        cell.score_sum += s
        cell.score_sumsq += s * s
    if record.metrics or record.feedback_metrics or score is not None:
        for name, value in record.effective_metrics.items():
            add_value(cell.metrics, name, value)


def contribution(record: CallRecord) -> Cell:
    """What one record adds to its cells."""
    cell = Cell()
    add_record(cell, record)
    return cell


def keys_for(record: CallRecord) -> tuple[CellKey, CellKey]:
    version, arm = record.version or "", record.arm or ""
    return (
        (record.target, version, arm, int(record.ts // BUCKET_S)),
        (record.target, version, arm, ALL_TIME),
    )


def cells_for(records: Iterable[CallRecord]) -> dict[CellKey, Cell]:
    """Group a batch of records into cell increments (hour and all-time)."""
    hours: dict[CellKey, Cell] = {}
    for record in records:
        key = (record.target, record.version or "", record.arm or "", int(record.ts // BUCKET_S))
        cell = hours.get(key)
        if cell is None:
            cell = hours[key] = Cell()
        add_record(cell, record)
    out = dict(hours)
    for (target, version, arm, _), cell in hours.items():
        key = (target, version, arm, ALL_TIME)
        if key in out:
            out[key].add(cell)
        else:
            out[key] = cell.copy()
    return out


def feedback_delta(before: CallRecord, after: CallRecord) -> dict[CellKey, Cell]:
    """The cell increments that turn ``before``'s contribution into ``after``'s."""
    delta = contribution(after).add(contribution(before), -1)
    if delta.is_zero():
        return {}
    return {key: delta.copy() for key in keys_for(after)}


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (95 % by default)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(slots=True, frozen=True)
class Stats:
    """What ``guard.stats`` returns; computed from cells, never from history.

    ``n`` counts every call; ``success_rate`` is successes / (successes + failures)
    (interrupted and cancelled calls are control flow, not failures) with its Wilson 95 %
    interval ``success_ci``; ``p50_s``/``p95_s`` are latencies of successful calls.
    """

    target: str
    n: int
    successes: int
    failures: int
    interrupted: int
    cancelled: int
    blocked: int
    success_rate: float | None
    success_ci: tuple[float, float] | None
    p50_s: float | None
    p95_s: float | None
    mean_log_latency: float | None
    score_mean: float | None
    score_n: int
    #: attempts that ended in an error, final or retried (the attempt error rate is
    #: ``attempt_errors / n``; ``failures`` counts final outcomes only)
    attempt_errors: int = 0
    #: failed attempts that the framework ran again (``Outcome.RETRIED``)
    retried: int = 0
    #: every metric the calls carry (``score``, ``tokens_in``, ...): n, mean, 95 % interval
    metrics: dict[str, MetricStats] = field(default_factory=dict)

    @classmethod
    def from_cell(cls, target: str, cell: Cell) -> "Stats":
        decided = cell.successes + cell.failures
        return cls(
            target=target,
            n=cell.n,
            successes=cell.successes,
            failures=cell.failures,
            interrupted=cell.n_interrupted,
            cancelled=cell.n_cancelled,
            blocked=cell.n_blocked,
            success_rate=cell.successes / decided if decided else None,
            success_ci=wilson(cell.successes, decided),
            p50_s=cell.quantile(0.50),
            p95_s=cell.quantile(0.95),
            mean_log_latency=cell.lat_sum / cell.lat_n if cell.lat_n else None,
            score_mean=cell.score_sum / cell.score_n if cell.score_n else None,
            score_n=cell.score_n,
            attempt_errors=cell.n_error,
            retried=cell.n_retried,
            metrics=_metric_stats(cell),
        )


def _metric_stats(cell: Cell) -> dict[str, MetricStats]:
    """Each metric's stats; ``score`` from the score fields (they count every scored call,
    those aggregated before metrics existed too, so it agrees with ``score_mean``)."""
    out = {name: MetricStats.from_moments(name, m) for name, m in sorted(cell.metrics.items()) if m[0] > 0}
    if cell.score_n > 0:
        out["score"] = MetricStats.from_moments("score", [cell.score_n, cell.score_sum, cell.score_sumsq, 0, 0.0, 0.0])
    elif "score" in out:
        del out["score"]
    return dict(sorted(out.items()))


def merge(cells: Iterable[Cell]) -> Cell:
    total = Cell()
    for cell in cells:
        total.add(cell)
    return total

