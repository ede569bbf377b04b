"""Differences between two experiments' per-unit metrics: estimate, 95 % interval, p-values.

Pure functions of arrays (no files, no tables). The tests are scipy's: the paired t-test
(``scipy.stats.ttest_rel`` and its ``confidence_interval``), the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``) and, when the experiments share no unit, Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``). Holm's step-down correction is written out here
because scipy has none.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["MIN_WILCOXON_PAIRS", "Difference", "holm", "paired_difference", "welch_difference"]

# The smallest number of non-zero differences whose exact two-sided Wilcoxon p-value can fall
# below 0.05 (2 / 2**6 = 0.031); with fewer pairs the test cannot reject and is not reported.
MIN_WILCOXON_PAIRS = 6


@dataclass(frozen=True)
class Difference:
    """The difference ``row - baseline`` of one metric.

    Attributes:
        diff: The mean of the paired differences, or (unpaired) the difference of the means.
        ci_low: Lower end of the confidence interval of ``diff``; None when undefined (n = 1).
        ci_high: Upper end of the confidence interval; None when undefined.
        p_t: Two-sided p-value of the paired t-test (Welch's t-test when unpaired); None when
            undefined.
        p_wilcoxon: Two-sided p-value of the Wilcoxon signed-rank test; None when unpaired or
            with fewer than :data:`MIN_WILCOXON_PAIRS` non-zero differences.
        n: The number of pairs (paired) or of the row's values (unpaired) used.
        n_baseline: The number of the baseline's values used (``n`` when paired).
        paired: Whether the comparison is paired.
        note: What a reader must know: dropped pairs, n = 1, the unpaired test; "" if nothing.
    """

    diff: float
    ci_low: float | None
    ci_high: float | None
    p_t: float | None
    p_wilcoxon: float | None
    n: int
    n_baseline: int
    paired: bool
    note: str


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def paired_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> Difference:
    """Paired comparison of ``values[i]`` with ``baseline[i]`` (the same unit).

    Pairs where either value is NaN are dropped (and the note says how many). With one pair
    there is no interval and no p-value; the Wilcoxon test needs :data:`MIN_WILCOXON_PAIRS`
    non-zero differences (zero differences are dropped, scipy's ``zero_method="wilcox"``).

    Shape:
        values, baseline: ``(n,)``, aligned.

    Raises:
        ValueError: If the two arrays differ in length.
    """
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    if values.shape != baseline.shape or values.ndim != 1:
        raise ValueError(
            f"Expected `values` and `baseline` of one equal length, got shapes {values.shape} "
            f"and {baseline.shape}"
        )
    keep = ~(np.isnan(values) | np.isnan(baseline))
    notes = []
    if not keep.all():
        notes.append(f"{int((~keep).sum())} pair(s) with NaN dropped")
    values, baseline = values[keep], baseline[keep]
    n = len(values)
    if n == 0:
        return Difference(math.nan, None, None, None, None, 0, 0, True, "; ".join(notes))
    differences = values - baseline
    diff = float(differences.mean())
    if n == 1:
        notes.append("n = 1: no interval")
        return Difference(diff, None, None, None, None, 1, 1, True, "; ".join(notes))
    # Identical differences make scipy warn (zero variance); the note says it instead.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_rel(values, baseline)
        interval = result.confidence_interval(confidence)
        p_wilcoxon = None
        if np.count_nonzero(differences) >= MIN_WILCOXON_PAIRS:
            p_wilcoxon = _finite(stats.wilcoxon(values, baseline).pvalue)
    if np.all(differences == differences[0]):
        # Zero variance: scipy's t is 0/0 or ±inf, neither a test nor an interval.
        notes.append("all differences equal: no t-test")
        return Difference(diff, None, None, None, p_wilcoxon, n, n, True, "; ".join(notes))
    return Difference(
        diff,
        _finite(interval.low),
        _finite(interval.high),
        _finite(result.pvalue),
        p_wilcoxon,
        n,
        n,
        True,
        "; ".join(notes),
    )


def welch_difference(
    values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> Difference:
    """Unpaired comparison of the means of ``values`` and ``baseline`` (Welch's t-test).

    NaN values are dropped (and the note says how many). The interval and p-value need at
    least two values on each side.

    Shape:
        values: ``(n,)``; baseline: ``(m,)``.
    """
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    dropped = int(np.isnan(values).sum() + np.isnan(baseline).sum())
    values, baseline = values[~np.isnan(values)], baseline[~np.isnan(baseline)]
    notes = ["unpaired (Welch)"]
    if dropped:
        notes.append(f"{dropped} NaN value(s) dropped")
    n, m = len(values), len(baseline)
    if n == 0 or m == 0:
        return Difference(math.nan, None, None, None, None, n, m, False, "; ".join(notes))
    diff = float(values.mean() - baseline.mean())
    if n < 2 or m < 2:
        notes.append(f"n = {min(n, m)}: no interval")
        return Difference(diff, None, None, None, None, n, m, False, "; ".join(notes))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(values, baseline, equal_var=False)
        interval = result.confidence_interval(confidence)
    return Difference(
        diff,
        _finite(interval.low),
        _finite(interval.high),
        _finite(result.pvalue),
        None,
        n,
        m,
        False,
        "; ".join(notes),
    )


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family; None entries stay None and do not
    count in the family's size.

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted
