"""Exact binomial (Clopper-Pearson) bounds: the exit-threshold guard and the accuracy intervals of archive records.

Exact rather than normal-approximation or Hoeffding bounds because our splits are small (digits validates on 359
images, where one image is 0.28 pt): a Wald interval collapses to zero width at 0 or n successes, and Hoeffding's
slack alone is ~6.5 pt at n = 359. Clopper-Pearson is conservative (coverage >= the nominal level for every p).
"""
from __future__ import annotations

from scipy.stats import beta

ACCURACY_CONFIDENCE = 0.95  # two-sided level of the intervals stored in records and shown in reports


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided upper bound on a binomial rate from k successes in n trials: P(rate > bound) <= alpha."""
    if k >= n:
        return 1.0
    return float(beta.ppf(1.0 - alpha, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided lower bound on a binomial rate from k successes in n trials: P(rate < bound) <= alpha."""
    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def accuracy_interval(accuracy: float, n: int, confidence: float = ACCURACY_CONFIDENCE) -> list[float]:
    """Two-sided Clopper-Pearson interval [lo, hi] of an accuracy measured on n samples (alpha/2 on each side)."""
    k = int(round(accuracy * n))  # accuracies are k / n, so this recovers k exactly
    alpha = 1.0 - confidence
    return [clopper_pearson_lower(k, n, alpha / 2), clopper_pearson_upper(k, n, alpha / 2)]
