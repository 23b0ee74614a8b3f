"""Tests for dragsaw.benchmark.stats against hand-worked values and independent reference computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dragsaw.benchmark.stats import holm, mean_ci, paired_bootstrap_ci, paired_comparison, wilcoxon_signed_rank


def exact_wilcoxon_reference(differences) -> float:
    """Two-sided exact p by enumerating all 2^n sign assignments of the ranks (no ties, zeros dropped)."""
    d = [x for x in differences if x != 0]
    n = len(d)
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks = [0] * n
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    t_obs = sum(r for r, x in zip(ranks, d) if x > 0)
    totals = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=n)]
    low = sum(t <= t_obs for t in totals) / len(totals)
    high = sum(t >= t_obs for t in totals) / len(totals)
    return min(1.0, 2 * min(low, high))


# ---------------------------------------------------------------------------------------------------- mean_ci


def test_mean_ci_known_values():
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} / sqrt(3); t_{0.975, 2} = 4.302652729911275 (tables)
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert n == 3 and mean == pytest.approx(2.0)
    assert low == pytest.approx(2.0 - half, rel=1e-9) and high == pytest.approx(2.0 + half, rel=1e-9)
    # 90%: t_{0.95, 2} = 2.919985580355516
    _, low90, high90, _ = mean_ci([1.0, 2.0, 3.0], confidence=0.90)
    assert high90 - 2.0 == pytest.approx(2.919985580355516 / math.sqrt(3), rel=1e-9)


def test_mean_ci_drops_nan_and_single_value():
    assert mean_ci([1.0, float("nan"), 3.0])[3] == 2
    assert mean_ci([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)
    mean, low, high, n = mean_ci([0.7])
    assert (mean, n) == (0.7, 1) and math.isnan(low) and math.isnan(high)
    mean, low, high, n = mean_ci([float("nan")])
    assert n == 0 and math.isnan(mean)
    assert mean_ci([0.5, 0.5, 0.5])[1:3] == (0.5, 0.5)


@pytest.mark.parametrize("bad", [0.0, 1.0, 95, -0.1, True, "0.95"])
def test_mean_ci_rejects_bad_confidence(bad):
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=bad)


def test_mean_ci_rejects_bad_values():
    with pytest.raises(ValueError, match="1-D"):
        mean_ci([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="infinite"):
        mean_ci([1.0, float("inf")])
    with pytest.raises(ValueError, match="numbers"):
        mean_ci(["a", "b"])


# ---------------------------------------------------------------------------------------------------- wilcoxon


@pytest.mark.parametrize(
    "diffs",
    [
        [0.5, -1.2, 2.3, 3.1, -0.7, 4.4, 1.9],
        [0.11, 0.25, 0.32, 0.47, 0.58, 0.69],  # all positive: p = 2 / 2^6
        [-0.3, 0.1, -0.2, 0.4, -0.5, 0.6, -0.7, 0.8, -0.9, 1.0],
        [0.0, 0.3, -0.1, 0.0, 0.2, 0.45, -0.05],  # zeros are dropped
        [0.2],
    ],
)
def test_wilcoxon_exact_matches_enumeration(diffs):
    assert wilcoxon_signed_rank(diffs) == pytest.approx(exact_wilcoxon_reference(diffs), abs=1e-12)


def test_wilcoxon_hand_value():
    # all six differences positive: the only assignments as extreme are all-positive and all-negative
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)


def test_wilcoxon_all_zero_and_empty():
    assert wilcoxon_signed_rank([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_signed_rank([]))
    assert math.isnan(wilcoxon_signed_rank([float("nan")]))


def test_wilcoxon_ties_use_tie_corrected_normal_approximation():
    d = np.array([1.0, 1.0, -2.0, 3.0, 3.0, 3.0, 4.0, -1.0, 5.0])
    # by hand: |d| ranks with ties averaged; T+ = sum of positive ranks
    absd = np.abs(d)
    ranks = np.array([np.mean([1 + j for j, y in enumerate(sorted(absd)) if y == x]) for x in absd])
    t_plus = ranks[d > 0].sum()
    n = d.size
    _, counts = np.unique(absd, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(counts**3 - counts) / 48
    z = (t_plus - n * (n + 1) / 4) / math.sqrt(var)
    expected = math.erfc(abs(z) / math.sqrt(2))
    assert wilcoxon_signed_rank(d) == pytest.approx(expected, rel=1e-9)


def test_wilcoxon_large_n_uses_normal_approximation():
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 1.0, 80)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    n = d.size
    z = (ranks[d > 0].sum() - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert wilcoxon_signed_rank(d) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


# ---------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_deterministic_and_seed_dependent():
    d = np.random.default_rng(0).normal(0.02, 0.05, 30)
    a = paired_bootstrap_ci(d, n_boot=2000, seed=5)
    assert a == paired_bootstrap_ci(d, n_boot=2000, seed=5)
    assert a != paired_bootstrap_ci(d, n_boot=2000, seed=6)
    assert a[0] < d.mean() < a[1]


def test_bootstrap_degenerate_inputs():
    assert paired_bootstrap_ci([0.3]) == (0.3, 0.3)
    assert paired_bootstrap_ci([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))
    low, high = paired_bootstrap_ci([float("nan")])
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_interval_matches_resampling_distribution():
    # two values: resample means are k/n * a + (1 - k/n) * b, k ~ Binomial(n, 1/2); the interval must lie in
    # the range of possible means and be symmetric about the mean for symmetric data
    low, high = paired_bootstrap_ci([-1.0, 1.0] * 10, n_boot=4000, seed=1)
    assert -1.0 <= low < 0.0 < high <= 1.0
    assert low == pytest.approx(-high, abs=0.1)


def test_bootstrap_coverage():
    rng = np.random.default_rng(12345)
    true_mean, reps, n = 0.3, 200, 25
    data = rng.normal(true_mean, 1.0, size=(reps, n))
    covered = 0
    for i in range(reps):
        low, high = paired_bootstrap_ci(data[i], n_boot=1000, seed=i)
        covered += low <= true_mean <= high
    assert 0.90 * reps <= covered <= 0.99 * reps


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_boot": 0}, "n_boot"), ({"n_boot": 2.5}, "n_boot"), ({"seed": -1}, "seed"), ({"confidence": 2}, "confidence")],
)
def test_bootstrap_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_ci([0.1, 0.2], **kwargs)


# ---------------------------------------------------------------------------------------------------- holm


def test_holm_known_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1, monotone
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.01]) == [0.01]
    assert holm([]) == []


def test_holm_nan_passes_through():
    out = holm([0.2, float("nan"), 0.6])
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)


def test_holm_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


# ---------------------------------------------------------------------------------------------------- paired


def test_paired_comparison_values():
    a = {"c1": [0.80, 0.82], "c2": [0.70, 0.74], "c3": [0.60, 0.60], "c4": [0.90, 0.88]}
    b = {"c1": [0.85, 0.85], "c2": [0.71, 0.75], "c3": [0.57, 0.60], "c4": [0.93, 0.95]}
    out = paired_comparison(a, b)
    diffs = [0.85 - 0.81, 0.73 - 0.72, 0.585 - 0.60, 0.94 - 0.89]  # no tied |d|: exact test
    assert out["n_cases"] == 4
    assert out["mean_a"] == pytest.approx(np.mean([0.81, 0.72, 0.60, 0.89]))
    assert out["mean_b"] == pytest.approx(np.mean([0.85, 0.73, 0.585, 0.94]))
    assert out["mean_diff"] == pytest.approx(np.mean(diffs))
    assert out["p_wilcoxon"] == pytest.approx(exact_wilcoxon_reference(diffs))
    assert out["ci_low"] <= out["mean_diff"] <= out["ci_high"]
    assert set(out) == {"n_cases", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_wilcoxon"}


def test_paired_comparison_names_unmatched_cases():
    with pytest.raises(ValueError, match=r"only in table_a: \['x'\].*only in table_b: \['y'\]"):
        paired_comparison({"c": [1.0], "x": [1.0]}, {"c": [1.0], "y": [1.0]})


def test_paired_comparison_rejects_seed_mismatch_and_non_dict():
    with pytest.raises(ValueError, match="'c'"):
        paired_comparison({"c": [1.0, 2.0]}, {"c": [1.0]})
    with pytest.raises(ValueError, match="dict"):
        paired_comparison([1.0], {"c": [1.0]})
