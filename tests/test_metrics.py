"""Tests for dragsaw.metrics against hand computations and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dragsaw.errors import ConfigError, DataError
from dragsaw.metrics import (
    case_metrics,
    dice_jaccard_consistent,
    error_auroc,
    jaccard_lower_bound,
    resize_logits_to,
    softmax_entropy,
    summarize,
)

REL = 1e-6  # MONAI divides in float32


# ----------------------------------------------------------------------------------------------------------------
# Brute-force HD95 reference (the definition documented in dragsaw.metrics, written independently of MONAI).
def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background face neighbour; outside the image counts as background."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
            interior &= neighbour
    return mask & ~interior


def _hd95_brute(pred: np.ndarray, target: np.ndarray, spacing=None) -> float:
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    a = np.argwhere(_boundary(pred)) * scale
    b = np.argwhere(_boundary(target)) * scale
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # every pair of boundary points
    a_to_b = pairwise.min(axis=1)
    b_to_a = pairwise.min(axis=0)
    return max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))  # linear interpolation, like torch.quantile


def test_boundary_reference_itself():
    m = np.ones((4, 5), bool)
    ring = _boundary(m)
    assert ring.sum() == 4 * 5 - 2 * 3 and not ring[1:3, 1:4].any()


# ----------------------------------------------------------------------------------------------------------------
# Dice / Jaccard / accuracy by hand.
def test_binary_2d_by_hand():
    target = np.zeros((6, 7), np.int64)
    target[1:4, 1:4] = 1  # 9 pixels
    pred = np.zeros((6, 7), np.int64)
    pred[2:5, 2:6] = 1  # 12 pixels; overlap rows 2-3 x cols 2-3 = 4
    tp, fp, fn = 4, 8, 5
    tn = 42 - tp - fp - fn  # 25
    m = case_metrics(pred, target, 2, include_hd95=False)
    assert m["dice/1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=REL)  # 8/21
    assert m["jaccard/1"] == pytest.approx(tp / (tp + fp + fn), rel=REL)  # 4/17
    assert m["dice_fg"] == m["dice/1"] and m["jaccard_fg"] == m["jaccard/1"]
    assert m["accuracy"] == pytest.approx((tp + tn) / 42)
    dice_bg, jac_bg = 2 * tn / (2 * tn + fn + fp), tn / (tn + fn + fp)  # 50/63, 25/38
    assert m["dice_bg_incl"] == pytest.approx((8 / 21 + dice_bg) / 2, rel=REL)
    assert m["jaccard_bg_incl"] == pytest.approx((4 / 17 + jac_bg) / 2, rel=REL)
    assert not any(k.startswith("hd95") for k in m)


def test_multiclass_2d_by_hand():
    target = np.array([[0, 1, 1, 2], [0, 1, 2, 2], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 2]])
    # class 1: TP (0,1),(1,1); FP (1,0); FN (0,2)  -> Dice 4/6, J 2/4
    # class 2: TP (0,3),(1,2),(1,3),(2,3); FP (0,2); FN (2,2) -> Dice 8/10, J 4/6
    # class 0: TP (0,0),(2,0),(2,1); FP (2,2); FN (1,0) -> Dice 6/8, J 3/5
    m = case_metrics(torch.from_numpy(pred), torch.from_numpy(target), 3, include_hd95=False)
    assert m["dice/1"] == pytest.approx(2 / 3, rel=REL) and m["jaccard/1"] == pytest.approx(0.5, rel=REL)
    assert m["dice/2"] == pytest.approx(0.8, rel=REL) and m["jaccard/2"] == pytest.approx(2 / 3, rel=REL)
    assert m["dice_fg"] == pytest.approx((2 / 3 + 0.8) / 2, rel=REL)
    assert m["jaccard_fg"] == pytest.approx((0.5 + 2 / 3) / 2, rel=REL)
    assert m["dice_bg_incl"] == pytest.approx((0.75 + 2 / 3 + 0.8) / 3, rel=REL)
    assert m["jaccard_bg_incl"] == pytest.approx((0.6 + 0.5 + 2 / 3) / 3, rel=REL)
    assert m["accuracy"] == pytest.approx(9 / 12)  # wrong at (0,2), (1,0), (2,2)


def test_3d_by_hand_with_absent_class():
    target = np.zeros((2, 3, 3), np.int64)
    target[0, 0:2, 0:2] = 1
    target[1, 0, 0] = 1  # 5 voxels
    pred = np.zeros((2, 3, 3), np.int64)
    pred[0, 0:2, 0:2] = 1
    pred[0, 1, 1] = 0
    pred[1, 1, 1] = 1  # 4 voxels: TP 3, FP 1, FN 2
    m = case_metrics(pred, target, 3)
    assert m["dice/1"] == pytest.approx(6 / 9, rel=REL) and m["jaccard/1"] == pytest.approx(3 / 6, rel=REL)
    # class 2 is absent from both: Dice = Jaccard = 1, HD95 = 0
    assert m["dice/2"] == 1.0 and m["jaccard/2"] == 1.0 and m["hd95/2"] == 0.0
    assert m["dice_fg"] == pytest.approx((2 / 3 + 1) / 2, rel=REL)
    assert m["accuracy"] == pytest.approx(15 / 18)
    assert m["hd95/1"] == pytest.approx(_hd95_brute(pred == 1, target == 1), rel=1e-5)
    assert m["hd95_fg"] == pytest.approx(m["hd95/1"] / 2, rel=1e-5) and m["hd95_excluded"] == 0


# ----------------------------------------------------------------------------------------------------------------
# Empty-mask policy.
@pytest.mark.parametrize("shape", [(5, 6), (3, 4, 5)])
def test_both_empty(shape):
    z = np.zeros(shape, np.int64)
    m = case_metrics(z, z, 2)
    assert (m["dice/1"], m["jaccard/1"], m["hd95/1"], m["hd95_excluded"]) == (1.0, 1.0, 0.0, 0)
    assert m["accuracy"] == 1.0 and m["dice_bg_incl"] == 1.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_exactly_one_empty(pred_empty):
    full = np.zeros((5, 6), np.int64)
    full[1:3, 2:5] = 1
    empty = np.zeros_like(full)
    pred, target = (empty, full) if pred_empty else (full, empty)
    m = case_metrics(pred, target, 2)
    assert m["dice/1"] == 0.0 and m["jaccard/1"] == 0.0
    assert math.isnan(m["hd95/1"]) and math.isnan(m["hd95_fg"]) and m["hd95_excluded"] == 1
    assert m["accuracy"] == pytest.approx(1 - 6 / 30)


def test_undefined_hd95_left_out_of_class_mean():
    target = np.zeros((6, 6), np.int64)
    target[0:2, 0:2] = 1
    target[4:6, 4:6] = 2  # class 2 only in the target
    pred = np.zeros_like(target)
    pred[0:2, 1:3] = 1
    m = case_metrics(pred, target, 3)
    assert math.isnan(m["hd95/2"]) and m["hd95_excluded"] == 1
    assert m["hd95_fg"] == pytest.approx(m["hd95/1"])
    assert m["hd95/1"] == pytest.approx(_hd95_brute(pred == 1, target == 1), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# HD95 against the brute-force reference.
def test_hd95_two_single_pixels_by_hand():
    target = np.zeros((4, 7), np.int64)
    pred = np.zeros((4, 7), np.int64)
    target[1, 1] = 1
    pred[1, 4] = 1
    assert case_metrics(pred, target, 2)["hd95/1"] == pytest.approx(3.0)
    assert case_metrics(pred, target, 2, spacing=(2.0, 0.5))["hd95/1"] == pytest.approx(1.5)
    assert case_metrics(pred, target, 2, spacing=4.0)["hd95/1"] == pytest.approx(12.0)


def _random_blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A label map with class 1 as a smoothed random field (several blobs, some touching the border)."""
    noise = rng.random(shape)
    smooth = noise.copy()
    for axis in range(len(shape)):
        smooth = smooth + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)
    return (smooth > np.quantile(smooth, 0.6)).astype(np.int64)


@pytest.mark.parametrize(
    "shape,spacing",
    [((12, 14), None), ((12, 14), (0.7, 1.9)), ((6, 7, 8), None), ((6, 7, 8), (2.5, 0.8, 1.3))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    pred, target = _random_blobs(rng, shape), _random_blobs(rng, shape)
    got = case_metrics(pred, target, 2, spacing=spacing)["hd95/1"]
    assert got == pytest.approx(_hd95_brute(pred == 1, target == 1, spacing), rel=1e-5)


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # The prediction is the target square plus a 3-pixel outlier line: 3 of the prediction's 39 boundary pixels
    # (7.7%) are far, so its directed 95th percentile is large, while among the 75 pooled distances only 4% are
    # far and the pooled 95th percentile is 0.
    target = np.zeros((20, 20), np.int64)
    target[1:11, 1:11] = 1  # 36 boundary pixels
    pred = target.copy()
    pred[17, 15:18] = 1
    got = case_metrics(pred, target, 2)["hd95/1"]
    a, b = np.argwhere(_boundary(pred == 1)), np.argwhere(_boundary(target == 1))
    d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    pooled = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
    assert got == pytest.approx(_hd95_brute(pred == 1, target == 1), rel=1e-5)
    assert pooled == 0.0 and got > 5.0


def test_hd95_full_image_mask_uses_image_border_as_boundary():
    target = np.ones((5, 5), np.int64)
    pred = np.zeros_like(target)
    pred[2, 2] = 1
    # Boundary of the full mask is the outer ring; the centre pixel is 2 from the ring's nearest points.
    m = case_metrics(pred, target, 2)
    assert m["hd95/1"] == pytest.approx(_hd95_brute(pred == 1, target == 1), rel=1e-5)
    assert m["hd95/1"] > 2.0


def test_spacing_scales_hd95_linearly():
    rng = np.random.default_rng(5)
    pred, target = _random_blobs(rng, (6, 7, 5)), _random_blobs(rng, (6, 7, 5))
    base = case_metrics(pred, target, 2)["hd95/1"]
    assert case_metrics(pred, target, 2, spacing=3.0)["hd95/1"] == pytest.approx(3.0 * base, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Input checks.
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError, match=r"\(6, 7\).*\(6, 8\)"):
        case_metrics(np.zeros((6, 7), int), np.zeros((6, 8), int), 2)


def test_bad_inputs():
    z = np.zeros((4, 4), int)
    with pytest.raises(ConfigError, match="num_classes"):
        case_metrics(z, z, 1)
    with pytest.raises(DataError, match="integer class labels"):
        case_metrics(z.astype(np.float32), z, 2)
    bad = z.copy()
    bad[0, 0] = 3
    with pytest.raises(DataError, match=r"target holds labels in \[0, 3\].*num_classes=2"):
        case_metrics(z, bad, 2)
    with pytest.raises(DataError, match="spacing"):
        case_metrics(z, z, 2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="spacing"):
        case_metrics(z, z, 2, spacing=(1.0, -2.0))
    with pytest.raises(DataError, match="2D"):
        case_metrics(np.zeros(5, int), np.zeros(5, int), 2)


# ----------------------------------------------------------------------------------------------------------------
# summarize.
def test_summarize_means_std_and_nan():
    cases = [
        {"case_id": "a", "dice_fg": 0.5, "hd95_fg": 2.0},
        {"case_id": "b", "dice_fg": 1.0, "hd95_fg": math.nan},
        {"case_id": "c", "dice_fg": 0.0, "hd95_fg": 4.0},
    ]
    s = summarize(cases)
    assert "case_id" not in s
    assert s["dice_fg"] == {"mean": pytest.approx(0.5), "std": pytest.approx(math.sqrt(1 / 6)), "n": 3, "n_nan": 0}
    assert s["hd95_fg"] == {"mean": pytest.approx(3.0), "std": pytest.approx(1.0), "n": 2, "n_nan": 1}


def test_summarize_all_nan_and_macro_average_of_case_metrics():
    s = summarize([{"hd95_fg": math.nan}, {"hd95_fg": math.nan}])
    assert math.isnan(s["hd95_fg"]["mean"]) and s["hd95_fg"]["n"] == 0 and s["hd95_fg"]["n_nan"] == 2
    # Macro: a tiny case counts as much as a large one.
    small_t = np.zeros((2, 2), int)
    small_t[0, 0] = 1
    big_t = np.ones((10, 10), int)
    per_case = [case_metrics(np.zeros((2, 2), int), small_t, 2), case_metrics(big_t, big_t, 2)]
    assert summarize(per_case)["dice_fg"]["mean"] == pytest.approx(0.5)
    assert summarize(per_case)["hd95_fg"]["n_nan"] == 1


def test_summarize_errors():
    with pytest.raises(DataError, match="non-empty"):
        summarize([])
    with pytest.raises(DataError, match=r"per_case\[1\].*dice/2"):
        summarize([{"dice/1": 1.0}, {"dice/1": 1.0, "dice/2": 0.5}])
    with pytest.raises(DataError, match=r"per_case\[0\]\['x'\]"):
        summarize([{"x": [1.0]}])


# ----------------------------------------------------------------------------------------------------------------
# resize_logits_to.
def test_resize_by_hand_align_corners_false():
    logits = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    out = resize_logits_to(logits, (1, 4))
    # source x = (dst + 0.5) / 2 - 0.5, clamped to [0, 1]: 0, 0.25, 0.75, 1
    assert torch.allclose(out.reshape(-1), torch.tensor([0.0, 0.25, 0.75, 1.0]))


def _linear_resize_axis(a: np.ndarray, axis: int, out_len: int) -> np.ndarray:
    n = a.shape[axis]
    src = np.clip((np.arange(out_len) + 0.5) * n / out_len - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
    return np.take(a, lo, axis) * (1 - w) + np.take(a, hi, axis) * w


@pytest.mark.parametrize("in_size,out_size", [((3, 5), (7, 4)), ((2, 3, 4), (5, 3, 6))])
def test_resize_matches_separable_reference(in_size, out_size):
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = x.numpy()
    for i, n in enumerate(out_size):
        ref = _linear_resize_axis(ref, 2 + i, n)
    out = resize_logits_to(x, out_size)
    assert out.shape == (2, 3, *out_size) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def test_resize_identity_and_errors():
    x = torch.zeros(1, 2, 4, 4)
    assert resize_logits_to(x, (4, 4)) is x
    with pytest.raises(ConfigError, match="2 positive integers"):
        resize_logits_to(x, (4, 4, 4))
    with pytest.raises(ConfigError, match="size"):
        resize_logits_to(x, (0, 4))
    with pytest.raises(DataError, match="floating"):
        resize_logits_to(torch.zeros(1, 2, 4, 4, dtype=torch.long), (8, 8))
    with pytest.raises(DataError, match="floating"):
        resize_logits_to(torch.zeros(2, 4, 4), (8, 8))


# ----------------------------------------------------------------------------------------------------------------
# Dice/Jaccard identity.
def test_jaccard_lower_bound_values():
    assert jaccard_lower_bound(0.8) == pytest.approx(2 / 3)
    assert jaccard_lower_bound(0.0) == 0.0 and jaccard_lower_bound(1.0) == 1.0
    with pytest.raises(DataError, match="mean_dice"):
        jaccard_lower_bound(94.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_mean_jaccard_never_below_bound(dices):
    d = np.asarray(dices)
    mean_j = float(np.mean(d / (2 - d)))  # per-case J = D / (2 - D)
    assert mean_j >= jaccard_lower_bound(float(d.mean())) - 1e-12
    assert dice_jaccard_consistent(float(d.mean()), mean_j)


@pytest.mark.parametrize("dice,jac", [(94.51, 88.94), (93.51, 86.74), (79.44, 65.42)])
def test_published_pairs_flagged(dice, jac):
    assert not dice_jaccard_consistent(dice / 100, jac / 100)


def test_consistency_other_cases():
    assert dice_jaccard_consistent(0.9451, 0.8960)  # just above the bound
    assert not dice_jaccard_consistent(0.80, 0.85)  # Jaccard above Dice is impossible
    with pytest.raises(DataError, match="mean_jaccard"):
        dice_jaccard_consistent(0.9, 1.5)


# ---------------------------------------------------------------------------------------------------------------- error AUROC


def _naive_error_auroc(score, pred, target) -> float:
    """Every (wrong, right) pair: 1 when the wrong pixel scores higher, 1/2 for a tie."""
    score, wrong = np.asarray(score).ravel(), (np.asarray(pred) != np.asarray(target)).ravel()
    total = 0.0
    for a in score[wrong]:
        for b in score[~wrong]:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (wrong.sum() * (~wrong).sum())


@pytest.mark.parametrize("seed", range(6))
def test_error_auroc_matches_a_loop_over_all_pairs(seed):
    rng = np.random.default_rng(seed)
    shape = [(5, 7), (3, 4, 5), (9, 6)][seed % 3]
    score = rng.integers(0, 4, size=shape).astype(np.float64) / 3  # few distinct values: many ties
    if seed % 2:
        score = score + rng.normal(size=shape) * (rng.random(shape) < 0.5)  # mix tied and distinct values
    target = rng.integers(0, 3, size=shape)
    pred = np.where(rng.random(shape) < 0.4, rng.integers(0, 3, size=shape), target)
    expected = _naive_error_auroc(score, pred, target)
    assert error_auroc(score, pred, target) == pytest.approx(expected, abs=1e-12)
    assert error_auroc(torch.from_numpy(score), torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(
        expected, abs=1e-12
    )


def test_error_auroc_extremes_and_undefined_cases():
    target = np.array([[0, 1], [1, 0]])
    pred = np.array([[1, 1], [1, 1]])  # wrong at (0,0) and (1,1)
    assert error_auroc(np.array([[0.9, 0.1], [0.2, 0.8]]), pred, target) == 1.0
    assert error_auroc(np.array([[0.1, 0.9], [0.8, 0.2]]), pred, target) == 0.0
    assert error_auroc(np.full((2, 2), 0.5), pred, target) == 0.5  # all tied
    assert math.isnan(error_auroc(np.random.rand(2, 2), target, target))  # no wrong pixel
    assert math.isnan(error_auroc(np.random.rand(2, 2), 1 - target, target))  # no right pixel


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((2, 3)), np.zeros((2, 2), int), np.zeros((2, 2), int)), "same non-empty shape"),
        ((np.array([[np.nan, 0.0]]), np.zeros((1, 2), int), np.ones((1, 2), int)), "NaN or infinite"),
        ((np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2), int)), "integer class labels"),
        ((np.zeros((1, 2), bool), np.zeros((1, 2), int), np.zeros((1, 2), int)), "real numbers"),
    ],
)
def test_error_auroc_errors(args, match):
    with pytest.raises(DataError, match=match):
        error_auroc(*args)


def test_softmax_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5]], dtype=torch.float64).T.reshape(1, 2, 3, 1)
    p = 1 / (1 + np.exp(-2.0))  # softmax of (1, -1)
    q = 1 / (1 + np.exp(-1.5))  # softmax of (2, 0.5)
    expected = [1.0, -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2),
                -(q * np.log(q) + (1 - q) * np.log(1 - q)) / np.log(2)]
    out = softmax_entropy(logits)
    assert out.shape == (1, 1, 3, 1)
    np.testing.assert_allclose(out.reshape(-1).numpy(), expected, rtol=1e-12)
    three = softmax_entropy(torch.zeros(2, 3, 4, 4, 4))
    torch.testing.assert_close(three, torch.ones(2, 1, 4, 4, 4))  # uniform over 3 classes, 3D
    with pytest.raises(DataError, match="K >= 2"):
        softmax_entropy(torch.zeros(1, 1, 4, 4))
