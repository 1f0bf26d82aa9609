"""Distribution-free bounds on a quantile, read from a latency histogram.

The rank of the q-quantile among n observations is Binomial(n, q); a one-sided bound at
level alpha takes the order statistic ``z`` standard deviations away (normal
approximation). The histogram's bin edges make the bounds slightly conservative. With
fewer than 60 observations no upper bound on p95 exists at 5 % (0.95^59 > 0.05), so p95 is
only compared once both arms have 60 successful calls.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from ..aggregates import BINS_PER_OCTAVE, Cell

__all__ = ("MIN_CALLS_P95", "quantile_bounds")

MIN_CALLS_P95 = 60


def _value_at_rank(cell: Cell, rank: int, upper_edge: bool) -> float:
    seen = 0
    for b in sorted(cell.hist):
        seen += cell.hist[b]
        if seen >= rank:
            return 2.0 ** ((b + (1 if upper_edge else 0)) / BINS_PER_OCTAVE)
    return 2.0 ** ((max(cell.hist) + 1) / BINS_PER_OCTAVE)


def quantile_bounds(cell: Cell, q: float, alpha: float) -> tuple[float, float] | None:
    """``(lower, upper)`` one-sided level-``alpha`` bounds on the q-quantile, or ``None``."""
    n = sum(cell.hist.values())
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(1 - alpha)
    sd = math.sqrt(n * q * (1 - q))
    lo_rank = max(1, math.floor(n * q - z * sd))
    hi_rank = math.ceil(n * q + z * sd) + 1
    upper = math.inf if hi_rank > n else _value_at_rank(cell, hi_rank, True)
    return _value_at_rank(cell, lo_rank, False), upper
