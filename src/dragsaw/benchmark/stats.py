"""Statistics for benchmark tables: seed intervals, paired case-level tests, bootstrap intervals, Holm.

Pure NumPy/SciPy. Conventions shared by every function here:

* Scores are 1-D sequences of floats. ``NaN`` marks a missing value and is dropped (per function, as documented);
  infinite values are rejected.
* A *paired difference* is ``b - a`` for the same case (test image or volume); positive means ``b`` is better
  for a higher-is-better score such as Dice.
* Intervals are two-sided with coverage ``confidence`` (0.95 by default).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _sps

__all__ = ["mean_ci", "wilcoxon_signed_rank", "paired_bootstrap_ci", "holm", "paired_comparison"]

#: Largest number of non-zero differences for which :func:`wilcoxon_signed_rank` uses the exact distribution.
EXACT_MAX_N = 50


def _as_1d(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array; NaN kept, infinities and non-numbers rejected."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a 1-D sequence of numbers, got {type(values).__name__} {values!r:.80}; "
            "pass a list or 1-D array of floats (NaN for a missing value)."
        ) from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, got an array of shape {arr.shape}; flatten it or pass one row at a time."
        )
    if np.isinf(arr).any():
        raise ValueError(
            f"{name} holds infinite values at positions {np.flatnonzero(np.isinf(arr))[:8].tolist()}; "
            "replace them with NaN (missing) or a finite score."
        )
    return arr


def _check_confidence(confidence: Any) -> float:
    """``confidence`` as a float strictly between 0 and 1."""
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(
            f"confidence must be a number strictly between 0 and 1, got {confidence!r}; e.g. 0.95 for a 95% "
            "interval."
        )
    return float(confidence)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval of independent values (typically one score per seed).

    Args:
        values: 1-D, shape ``[n]``; NaNs are dropped before anything is computed.
        confidence: Two-sided coverage in (0, 1).

    Returns:
        ``(mean, low, high, n)`` with ``n`` the number of non-NaN values and
        ``mean -/+ t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` (``sd`` with ``ddof=1``) as ``low``/``high``.
        With ``n == 1`` the interval is undefined: ``low = high = nan``; with ``n == 0`` everything but ``n``
        is ``nan``. Identical values give ``low == high == mean``.

    Raises:
        ValueError: ``values`` is not 1-D numeric or holds infinities; ``confidence`` is outside (0, 1).
    """
    confidence = _check_confidence(confidence)
    arr = _as_1d(values, "values")
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(_sps.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sem
    return mean, mean - half, mean + half, n


def wilcoxon_signed_rank(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that paired differences are symmetric about 0.

    Zero differences are dropped before ranking (Wilcoxon's original ``"wilcox"`` convention), as are NaNs.
    With ``m`` non-zero differences:

    * ``m == 0`` (all differences zero): returns ``1.0``; no evidence of a difference.
    * ``m <= 50`` and no tied absolute values: the exact null distribution of the signed-rank statistic
      (``scipy.stats.wilcoxon(..., method="exact")``); two-sided p is twice the smaller tail, capped at 1.
    * otherwise: the normal approximation with the variance corrected for ties and no continuity correction
      (``scipy.stats.wilcoxon(..., method="asymptotic", correction=False)``).

    Args:
        differences: 1-D, shape ``[n]``, one ``b - a`` per case.

    Returns:
        The p-value in [0, 1]; ``nan`` if no difference is left after dropping NaNs (an empty input).

    Raises:
        ValueError: ``differences`` is not 1-D numeric or holds infinities.
    """
    d = _as_1d(differences, "differences")
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    d = d[d != 0.0]
    if d.size == 0:
        return 1.0
    ties = np.unique(np.abs(d)).size < d.size
    if d.size <= EXACT_MAX_N and not ties:
        res = _sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="exact")
    else:
        res = _sps.wilcoxon(d, zero_method="wilcox", correction=False, alternative="two-sided", method="asymptotic")
    return float(min(1.0, max(0.0, res.pvalue)))


def paired_bootstrap_ci(
    differences: Sequence[float] | np.ndarray, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean paired difference, resampling cases with replacement.

    Each of ``n_boot`` resamples draws ``n`` cases with replacement and takes the mean difference; the interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means (linear
    interpolation). The same ``differences``, ``n_boot`` and ``seed`` always give the same interval.

    Args:
        differences: 1-D, shape ``[n]``, one ``b - a`` per case; NaNs are dropped.
        confidence: Two-sided coverage in (0, 1).
        n_boot: Number of resamples, >= 1.
        seed: Seed of the NumPy ``default_rng`` that draws the resamples (an int >= 0).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when no difference is left, ``(d, d)`` for a single difference ``d``.

    Raises:
        ValueError: bad ``differences``, ``confidence``, ``n_boot`` or ``seed``.
    """
    confidence = _check_confidence(confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1, got {n_boot!r}; e.g. 10000 resamples.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}; pass e.g. seed=0 for a reproducible interval.")
    d = _as_1d(differences, "differences")
    d = d[~np.isnan(d)]
    n = d.size
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(int(seed))
    means = np.empty(int(n_boot), dtype=np.float64)
    chunk = max(1, 4_000_000 // n)  # bounds the index matrix to ~32 MB
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def holm(pvalues: Sequence[float] | np.ndarray) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in the input order.

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    ``i``-th (1-based) is ``min(1, max_{j <= i} (m - j + 1) * p_(j))``: monotone in the raw p-values and capped
    at 1. NaN entries are returned as NaN and do not count in ``m``.

    Args:
        pvalues: 1-D, shape ``[k]``, each in [0, 1] or NaN.

    Returns:
        A list of ``k`` floats.

    Raises:
        ValueError: ``pvalues`` is not 1-D numeric or holds values outside [0, 1].
    """
    p = _as_1d(pvalues, "pvalues")
    valid = ~np.isnan(p)
    bad = valid & ((p < 0.0) | (p > 1.0))
    if bad.any():
        raise ValueError(
            f"pvalues must lie in [0, 1] (or be NaN), got {p[bad][:8].tolist()} at positions "
            f"{np.flatnonzero(bad)[:8].tolist()}; pass raw p-values, not scores or log-p."
        )
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(valid)
    m = idx.size
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        scaled = p[order] * (m - np.arange(m))
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(v) for v in out]


def paired_comparison(
    table_a: Mapping[Any, Sequence[float] | np.ndarray],
    table_b: Mapping[Any, Sequence[float] | np.ndarray],
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Compare two methods case by case: per-case means over seeds, then differences ``b - a``.

    Each case's scores are averaged over seeds (NaNs ignored) on each side; a case whose mean is NaN on either
    side is left out. The remaining per-case differences give the mean difference, its percentile bootstrap
    interval (:func:`paired_bootstrap_ci`) and the Wilcoxon signed-rank p-value (:func:`wilcoxon_signed_rank`).

    Args:
        table_a: ``{case: scores}``, scores of shape ``[n_seeds]`` (seeds paired with ``table_b`` by position).
        table_b: Same cases, same number of seeds per case as ``table_a``.
        confidence, n_boot, seed: Passed to :func:`paired_bootstrap_ci`.

    Returns:
        ``{"n_cases", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_wilcoxon"}``: the number of cases
        used, the means over those cases of ``a``, of ``b`` and of ``b - a``, the interval and the p-value
        (``nan`` for everything but ``n_cases`` when no case is usable).

    Raises:
        ValueError: the case sets differ (the extra cases of each side are named), a case has a different
            number of seeds on the two sides or none, or scores are not numeric.
    """
    for name, table in (("table_a", table_a), ("table_b", table_b)):
        if not isinstance(table, Mapping):
            raise ValueError(
                f"{name} must be a dict case -> per-seed scores, got {type(table).__name__}; build it as "
                "{case: [score_seed1, score_seed2, ...]}."
            )
    only_a = [c for c in table_a if c not in table_b]
    only_b = [c for c in table_b if c not in table_a]
    if only_a or only_b:
        raise ValueError(
            f"the two tables must hold the same cases; only in table_a: {only_a[:10]}"
            f"{' ...' if len(only_a) > 10 else ''}, only in table_b: {only_b[:10]}"
            f"{' ...' if len(only_b) > 10 else ''}; restrict both to their common cases first."
        )
    means_a, means_b = [], []
    for case in table_a:
        a = _as_1d(table_a[case], f"table_a[{case!r}]")
        b = _as_1d(table_b[case], f"table_b[{case!r}]")
        if a.size == 0 or a.size != b.size:
            raise ValueError(
                f"case {case!r} has {a.size} seed score(s) in table_a and {b.size} in table_b; seeds are paired by "
                "position, so give both sides the same seeds, in the same order, and at least one."
            )
        ma = float(np.nanmean(a)) if not np.isnan(a).all() else math.nan
        mb = float(np.nanmean(b)) if not np.isnan(b).all() else math.nan
        if not (math.isnan(ma) or math.isnan(mb)):
            means_a.append(ma)
            means_b.append(mb)
    a_arr, b_arr = np.asarray(means_a, dtype=np.float64), np.asarray(means_b, dtype=np.float64)
    n_cases = int(a_arr.size)
    if n_cases == 0:
        nan = math.nan
        return {"n_cases": 0, "mean_a": nan, "mean_b": nan, "mean_diff": nan, "ci_low": nan, "ci_high": nan,
                "p_wilcoxon": nan}  # fmt: skip
    diff = b_arr - a_arr
    low, high = paired_bootstrap_ci(diff, confidence=confidence, n_boot=n_boot, seed=seed)
    return {
        "n_cases": n_cases,
        "mean_a": float(a_arr.mean()),
        "mean_b": float(b_arr.mean()),
        "mean_diff": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_wilcoxon": wilcoxon_signed_rank(diff),
    }
