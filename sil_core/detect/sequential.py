"""Anytime-valid one-sided bounds: checking after every call keeps the error rate.

A normal-mixture confidence sequence (Robbins; Howard et al. 2021, in the form Eppo
documents): for an estimate with standard error ``se`` after ``t`` observations,

    half(t) = se * sqrt((t + rho) / t * (ln((t + rho) / rho) + 2 ln(1 / alpha)))

holds for every ``t`` at once with probability >= 1 - alpha on each side, so a bound that
crosses a threshold at *any* check is evidence at level alpha (no peeking penalty).
``rho`` tunes where the sequence is tightest: ``rho = N / (ln ln(e / alpha^2) - 2 ln alpha)``
makes it tightest near ``t = N`` (the expected decision sample; agents: ~100-300 calls).
It is asymptotic (CLT-based); small-sample variance is stabilised with an
Agresti-Coull-style prior for proportions.
"""

from __future__ import annotations

import math

__all__ = ("cs_half_width", "proportion_diff_bounds", "mean_diff_bounds", "tuning_rho")


def tuning_rho(tuning_n: float, alpha: float) -> float:
    return tuning_n / (math.log(math.log(math.e / alpha**2)) - 2 * math.log(alpha))


def cs_half_width(se: float, t: float, alpha: float, rho: float) -> float:
    """Half-width of the one-sided level-``alpha`` confidence sequence at time ``t``."""
    if t <= 0:
        return math.inf
    return se * math.sqrt((t + rho) / t * (math.log((t + rho) / rho) + 2 * math.log(1 / alpha)))


def proportion_diff_bounds(
    s_a: int, n_a: int, s_b: int, n_b: int, alpha: float, rho: float
) -> tuple[float, float, float]:
    """``(estimate, lower, upper)`` of ``p_b - p_a``, each bound one-sided at ``alpha``.

    Variances use ``(s + 1) / (n + 2)`` so that an arm with no failures yet does not
    claim zero variance.
    """
    p_a, p_b = s_a / n_a, s_b / n_b
    pa_, pb_ = (s_a + 1) / (n_a + 2), (s_b + 1) / (n_b + 2)
    se = math.sqrt(pa_ * (1 - pa_) / n_a + pb_ * (1 - pb_) / n_b)
    half = cs_half_width(se, n_b, alpha, rho)
    d = p_b - p_a
    return d, d - half, d + half


def mean_diff_bounds(
    n_a: int, sum_a: float, sumsq_a: float, n_b: int, sum_b: float, sumsq_b: float, alpha: float, rho: float
) -> tuple[float, float, float]:
    """``(estimate, lower, upper)`` of ``mean_b - mean_a`` from sums and sums of squares."""
    m_a, m_b = sum_a / n_a, sum_b / n_b
    var_a = max(sumsq_a / n_a - m_a * m_a, 0.0) * n_a / max(n_a - 1, 1)
    var_b = max(sumsq_b / n_b - m_b * m_b, 0.0) * n_b / max(n_b - 1, 1)
    se = math.sqrt(var_a / n_a + var_b / n_b)
    half = cs_half_width(se, n_b, alpha, rho)
    d = m_b - m_a
    return d, d - half, d + half
