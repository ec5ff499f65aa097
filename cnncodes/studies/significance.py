"""How sure an accuracy is, and whether two classifiers differ on the same images.

Both come from SciPy's exact binomial test (``scipy.stats.binomtest``, installed with
scikit-learn): the Wilson score interval of a proportion, and the exact McNemar test,
which is a two-sided binomial test of the discordant pairs (images that exactly one of
the two classifiers gets right) against p = 1/2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["wilson_interval", "mcnemar_exact", "ALPHA"]

ALPHA = 0.05
"""Significance level of :func:`mcnemar_exact` as ``compare`` marks it (95 % intervals)."""


def wilson_interval(correct: int, n: int, confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes out of ``n``; (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    interval = binomtest(int(correct), int(n)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def mcnemar_exact(first: Sequence[bool] | np.ndarray,
                  second: Sequence[bool] | np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test of two classifiers' correctness on the same images.

    Args:
        first, second: per image, whether each classifier was right (same order).

    Returns:
        ``(only_first, only_second, p)``: the discordant counts and the two-sided p-value
        (1.0 when they never disagree).
    """
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs the same images: {a.shape} vs {b.shape} outcomes.")
    only_first, only_second = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_first + only_second == 0:
        return only_first, only_second, 1.0
    from scipy.stats import binomtest

    p = binomtest(only_first, only_first + only_second, 0.5).pvalue
    return only_first, only_second, float(min(1.0, p))
