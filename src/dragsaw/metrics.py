"""Segmentation metrics with explicit conventions: Dice, Jaccard, pixel accuracy and HD95 per case.

Conventions (METHOD.md sections 0 and 3.2):

* **Per case, then macro average.** :func:`case_metrics` scores ONE prediction against ONE label map at the
  label's native resolution; :func:`summarize` averages those per-case numbers over cases ("macro"). Pooling the
  confusion matrices of all cases ("micro") is a different number and is not what dragsaw reports.
* **Foreground is primary.** ``dice_fg``/``jaccard_fg``/``hd95_fg`` average the foreground classes 1..K-1 of a
  case. The reference code's background-inclusive average over all K classes is kept as the separately named
  ``dice_bg_incl``/``jaccard_bg_incl``.
* **Resize first.** Logits are resized to the label's native size (bilinear/trilinear, ``align_corners=False``)
  and only then arg-maxed: :func:`resize_logits_to`.

Empty-mask policy, per case and class ``c`` (``P`` = predicted mask, ``G`` = ground-truth mask of class ``c``):

========================  ================  =====================================================
situation                 Dice, Jaccard     HD95
========================  ================  =====================================================
both non-empty            usual formulas    MONAI's symmetric 95th-percentile surface distance
both empty                1, 1              0
exactly one empty         0, 0              NaN: left out of ``hd95_fg`` and of the means in
                                            :func:`summarize`, and counted (``hd95_excluded``)
========================  ================  =====================================================

HD95 definition (what ``monai.metrics.compute_hausdorff_distance(percentile=95)`` computes, read from its
source in monai 1.6): the boundary of a mask is its foreground pixels that the binary erosion with the
face-connected cross (outside of the image counts as background) removes, i.e. foreground pixels with at
least one background face neighbour or lying on the image border. For every boundary pixel of ``P`` take the
Euclidean distance to the nearest boundary pixel of ``G`` (coordinates multiplied by ``spacing``), and vice
versa; take the 95th percentile of each of the two directed sets (linear interpolation, as ``torch.quantile``);
HD95 is the larger of the two. It is NOT the percentile of the pooled distances.

Dice/Jaccard identity: for one case ``J = D / (2 - D)``. That map is convex on [0, 1], so by Jensen's inequality
a per-case mean Jaccard is at least ``D / (2 - D)`` for the mean Dice ``D`` (and at most ``D``, since ``J <= D``
case by case). :func:`jaccard_lower_bound` and :func:`dice_jaccard_consistent` use this to flag published pairs
that cannot be per-case means of one prediction set.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

from dragsaw._checks import is_int
from dragsaw.errors import ConfigError, DataError
from dragsaw.uafs import entropy_map

__all__ = [
    "case_metrics",
    "summarize",
    "resize_logits_to",
    "resize_logits_in_blocks",
    "RESIZE_BLOCK_PIXELS",
    "jaccard_lower_bound",
    "dice_jaccard_consistent",
    "error_auroc",
    "softmax_entropy",
]

_HD_PERCENTILE = 95.0


def _as_label_tensor(x: Any, name: str) -> torch.Tensor:
    """Convert a numpy array or tensor of integer labels to an int64 tensor; reject floats."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a numpy array or torch tensor of integer labels, got {type(x).__name__}.")
    if x.dtype.is_floating_point or x.dtype.is_complex:
        raise DataError(
            f"{name} must hold integer class labels, got dtype {x.dtype}; arg-max the logits (or round the mask) "
            "before scoring."
        )
    return x.long()


def _check_spacing(spacing: float | Sequence[float] | None, ndim: int) -> list[float] | None:
    """Validate ``spacing`` as one positive number or one per spatial axis; return it as a list."""
    if spacing is None:
        return None
    values = [spacing] * ndim if isinstance(spacing, (int, float)) else list(spacing)
    ok = len(values) == ndim and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values
    )
    if not ok:
        raise DataError(
            f"spacing must be one positive number or {ndim} positive numbers (one per spatial axis of the "
            f"{ndim}D label map), got {spacing!r}."
        )
    return [float(v) for v in values]


def _hd95(pred_c: torch.Tensor, target_c: torch.Tensor, spacing: list[float] | None) -> float:
    """HD95 of two non-empty boolean masks [*S] through MONAI (see the module docstring for the definition)."""
    with warnings.catch_warnings():
        # Only non-empty masks get here, so MONAI's empty-mask warnings cannot apply; monai 1.6 also warns on
        # every call about an argument it passes to itself (always_return_as_numpy), which is not ours to fix.
        warnings.filterwarnings("ignore", message=".*is all 0.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        hd = compute_hausdorff_distance(
            pred_c[None, None],
            target_c[None, None],
            include_background=True,
            percentile=_HD_PERCENTILE,
            spacing=spacing,
        )
    return float(hd.reshape(-1)[0])


def case_metrics(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    spacing: float | Sequence[float] | None = None,
    include_hd95: bool = True,
) -> dict[str, float]:
    """Score one predicted label map against its ground truth.

    Dice and Jaccard come from ``monai.metrics.compute_dice``/``compute_iou`` with ``ignore_empty=False`` (whose
    empty-mask results are exactly the policy in the module docstring; MONAI divides in float32, so values carry
    a relative error of about 1e-7), HD95 from ``monai.metrics.compute_hausdorff_distance(percentile=95)``.

    Shape:
        ``pred`` and ``target``: ``[*S]`` integer labels in ``[0, num_classes)``, 2D ``[H, W]`` or 3D
        ``[D, H, W]``, identical shapes (resize the prediction to the label's native size first).

    Args:
        pred: Predicted class per pixel (numpy array or tensor of an integer or bool dtype).
        target: Ground-truth class per pixel, same shape as ``pred``.
        num_classes: Number of classes K, background (class 0) included; at least 2.
        spacing: Physical size of a pixel/voxel per spatial axis (or one number for all axes); HD95 is then in
            those units. ``None`` measures HD95 in pixels.
        include_hd95: Compute the HD95 keys (the slowest part); ``False`` leaves them out of the result.

    Returns:
        A flat dict of Python numbers: ``dice/c``, ``jaccard/c`` (and ``hd95/c``) for each foreground class
        ``c = 1..K-1``; ``dice_fg``, ``jaccard_fg`` (mean over foreground classes); ``accuracy`` (fraction of
        pixels with the right class); ``dice_bg_incl``, ``jaccard_bg_incl`` (mean over all K classes, the
        reference code's convention); with HD95 also ``hd95_fg`` (mean over the foreground classes whose HD95
        is defined; NaN when none is) and ``hd95_excluded`` (how many foreground classes had NaN HD95).

    Raises:
        ConfigError: ``num_classes`` is not an integer >= 2.
        DataError: the shapes differ (both are named), the maps are not 2D/3D integer labels, a label lies
            outside ``[0, num_classes)``, or ``spacing`` is malformed.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}.")
    p = _as_label_tensor(pred, "pred")
    t = _as_label_tensor(target, "target")
    if p.shape != t.shape:
        raise DataError(
            f"pred and target must have the same shape, got pred {tuple(p.shape)} and target {tuple(t.shape)}; "
            "resize the logits to the target's native size (resize_logits_to) before the arg-max."
        )
    if p.ndim not in (2, 3) or p.numel() == 0:
        raise DataError(f"pred and target must be non-empty 2D [H, W] or 3D [D, H, W] maps, got {tuple(p.shape)}.")
    for name, x in (("pred", p), ("target", t)):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{name} holds labels in [{lo}, {hi}] but num_classes={num_classes} allows only 0..{num_classes - 1}; "
                "pass the right num_classes or remap the labels."
            )
    spacing_list = _check_spacing(spacing, p.ndim) if include_hd95 else None

    classes = torch.arange(num_classes, device=p.device).reshape(num_classes, *([1] * p.ndim))
    p_hot = (p[None] == classes)[None]  # [1, K, *S] bool
    t_hot = (t[None] == classes)[None]
    dice = compute_dice(p_hot, t_hot, include_background=True, ignore_empty=False).reshape(-1).double().cpu()
    jac = compute_iou(p_hot, t_hot, include_background=True, ignore_empty=False).reshape(-1).double().cpu()

    out: dict[str, float] = {}
    for c in range(1, num_classes):
        out[f"dice/{c}"] = float(dice[c])
        out[f"jaccard/{c}"] = float(jac[c])
    out["dice_fg"] = float(dice[1:].mean())
    out["jaccard_fg"] = float(jac[1:].mean())
    out["accuracy"] = int((p == t).sum()) / p.numel()
    out["dice_bg_incl"] = float(dice.mean())
    out["jaccard_bg_incl"] = float(jac.mean())

    if include_hd95:
        hds: list[float] = []
        for c in range(1, num_classes):
            has_p, has_t = bool(p_hot[0, c].any()), bool(t_hot[0, c].any())
            if has_p and has_t:
                hd = _hd95(p_hot[0, c], t_hot[0, c], spacing_list)
            elif not has_p and not has_t:
                hd = 0.0
            else:
                hd = math.nan
            out[f"hd95/{c}"] = hd
            hds.append(hd)
        defined = [h for h in hds if not math.isnan(h)]
        out["hd95_fg"] = sum(defined) / len(defined) if defined else math.nan
        out["hd95_excluded"] = len(hds) - len(defined)
    return out


def summarize(per_case: list[Mapping[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Average per-case metric dicts over cases (macro averaging, the primary convention).

    Every numeric key is summarised NaN-aware: NaN values (undefined HD95) are left out of the mean and std and
    counted in ``n_nan``. String values (e.g. a ``"case_id"`` the caller added) are skipped.

    Args:
        per_case: One dict per case, as returned by :func:`case_metrics` (optionally with extra keys). All
            cases must carry the same numeric keys.

    Returns:
        ``{key: {"mean": m, "std": s, "n": n, "n_nan": k}}`` where ``n`` counts the cases that entered the mean,
        ``n_nan`` those left out, and ``std`` is the population standard deviation (numpy's ``ddof=0``). When
        every case is NaN for a key, mean and std are NaN and ``n`` is 0.

    Raises:
        DataError: the list is empty, a value is neither a number nor a string, or the cases disagree on keys
            (the first offending case and key are named).
    """
    if not isinstance(per_case, (list, tuple)) or len(per_case) == 0:
        raise DataError("summarize needs a non-empty list of per-case metric dicts, got an empty or non-list value.")
    numeric_keys: list[str] | None = None
    columns: dict[str, list[float]] = {}
    for i, case in enumerate(per_case):
        if not isinstance(case, Mapping):
            raise DataError(f"per_case[{i}] must be a dict of metrics, got {type(case).__name__}.")
        keys = []
        for key, value in case.items():
            if isinstance(value, str):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise DataError(
                    f"per_case[{i}][{key!r}] must be a number (or a string, which is skipped), "
                    f"got {type(value).__name__}."
                )
            keys.append(key)
            columns.setdefault(key, []).append(float(value))
        if numeric_keys is None:
            numeric_keys = keys
        elif set(keys) != set(numeric_keys):
            diff = sorted(set(keys) ^ set(numeric_keys))
            raise DataError(
                f"per_case[{i}] has different metric keys than per_case[0] (differing: {diff}); score every case "
                "with the same num_classes and include_hd95."
            )
    summary: dict[str, dict[str, float | int]] = {}
    for key in numeric_keys or []:
        values = np.asarray(columns[key], dtype=np.float64)
        nan = np.isnan(values)
        kept = values[~nan]
        summary[key] = {
            "mean": float(kept.mean()) if kept.size else math.nan,
            "std": float(kept.std()) if kept.size else math.nan,
            "n": int(kept.size),
            "n_nan": int(nan.sum()),
        }
    return summary


def _check_resize(logits: Any, size: Any) -> tuple[int, ...]:
    """The target size as a tuple after the checks of :func:`resize_logits_to` (which raise)."""
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point or logits.ndim not in (4, 5):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(
            f"logits must be a floating tensor [B, K, H, W] or [B, K, D, H, W], got {shape}"
            + (f" of dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else "")
            + "."
        )
    spatial = logits.ndim - 2
    size_t = tuple(size) if isinstance(size, Sequence) else ()
    if len(size_t) != spatial or not all(is_int(s) and s > 0 for s in size_t):
        raise ConfigError(
            f"size must give {spatial} positive integers (one per spatial axis of logits {tuple(logits.shape)}), "
            f"got {size!r}."
        )
    return size_t


def resize_logits_to(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize logits to a target's native size before the arg-max (the ``resize_first`` convention).

    Bilinear for 2D and trilinear for 3D, ``align_corners=False``.

    Shape:
        ``logits``: ``[B, K, *S]`` with ``len(S)`` in (2, 3); returns ``[B, K, *size]``.

    Args:
        logits: Floating-point class scores.
        size: Target spatial size, one positive integer per spatial axis.

    Returns:
        The resized logits (same dtype and device); the input itself when the size already matches.

    Raises:
        DataError: ``logits`` is not a floating tensor of 4 or 5 dimensions.
        ConfigError: ``size`` does not give one positive integer per spatial axis.
    """
    size_t = _check_resize(logits, size)
    if tuple(logits.shape[2:]) == size_t:
        return logits
    mode = "bilinear" if len(size_t) == 2 else "trilinear"
    return F.interpolate(logits, size=size_t, mode=mode, align_corners=False)


RESIZE_BLOCK_PIXELS = 2**24
"""Output pixels per band of :func:`resize_logits_in_blocks` (read at each call, so tests may lower it)."""

_BAND_ALIGN = 64  # band starts are multiples of this many columns (see resize_logits_in_blocks)


def resize_logits_in_blocks(
    logits: torch.Tensor, size: Sequence[int], *, block_pixels: int | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """:func:`resize_logits_to` for 2D logits, produced band by band so the whole ``[B, K, H, W]`` output never exists.

    Yields ``(columns, band)``, ``band`` being ``resize_logits_to(logits, size)[..., columns]`` (see below for the
    last bit), the bands covering the output columns left to right; a consumer reduces each band (arg-max,
    probabilities, ...) before the next is made. Each band holds about ``block_pixels`` output pixels (default
    :data:`RESIZE_BLOCK_PIXELS`; at least 64 columns), plus one intermediate of ``[B, K, h, W]`` (the logits' own
    rows at the output width).

    How: bilinear resizing (``align_corners=False``) is separable, and PyTorch evaluates it rows-outside:
    ``out = wh0 * (ww0 * x00 + ww1 * x01) + wh1 * (ww0 * x10 + ww1 * x11)``. The width pass
    ``T = interpolate(logits, (h, W))`` (height unchanged: weights 1 and 0) gives exactly the inner terms, and
    ``interpolate(T[..., c0:c1], (H, c1 - c0))`` (width unchanged) combines them with the same height weights, which
    depend only on ``(h, H)`` and the row. So the weights, source coordinates included, are PyTorch's own (float32
    for float32 logits) and a band equals the whole-image resize up to how PyTorch's CPU kernel rounds a product
    sum (fused multiply-add or not), which depends on a value's place in the vectorised loop and on the thread
    count: band starts are multiples of 64 columns and the last band is at least 64 wide so that the place is
    mostly the same. In float32 with two classes the bands were bit-identical to the whole-image resize in our
    checks; otherwise they differ by a few units in the last place, as much as the whole-image resize itself does
    between one and two threads. A ``grid_sample`` grid would compute the source coordinates differently and move
    float32 logits by ~1e-4.

    Falls back to one band from :func:`resize_logits_to` when the output is at most ``block_pixels`` or narrower
    than 128 columns, or when the height is not enlarged (``h >= H``: the intermediate would be as large as the
    output).

    Shape:
        ``logits``: ``[B, K, h, w]``; yields ``[B, K, H, c1 - c0]`` for ``size == (H, W)``.

    Raises:
        DataError, ConfigError: as :func:`resize_logits_to` (also for 3D logits: this is 2D only).
    """
    limit = RESIZE_BLOCK_PIXELS if block_pixels is None else block_pixels
    if not is_int(limit) or limit < 1:
        raise ConfigError(f"block_pixels must be a positive integer, got {block_pixels!r}.")
    if isinstance(logits, torch.Tensor) and logits.ndim == 5:
        raise DataError(f"resize_logits_in_blocks is for 2D logits [B, K, H, W], got {tuple(logits.shape)}.")
    height, width = (int(s) for s in _check_resize(logits, size))
    if height * width <= limit or width < 2 * _BAND_ALIGN or logits.shape[2] >= height:
        return iter([(slice(0, width), resize_logits_to(logits, (height, width)))])
    band = max(_BAND_ALIGN, (limit // height) // _BAND_ALIGN * _BAND_ALIGN)
    starts = list(range(0, width, band))
    if width - starts[-1] < _BAND_ALIGN:  # the last band would be too narrow: widen the one before it
        starts.pop()
    return _resize_bands(logits, height, width, starts)


def _resize_bands(logits: torch.Tensor, height: int, width: int, starts: list[int]):
    rows = F.interpolate(logits, size=(logits.shape[2], width), mode="bilinear", align_corners=False)
    for i, c0 in enumerate(starts):
        c1 = starts[i + 1] if i + 1 < len(starts) else width
        part = rows[..., c0:c1].contiguous()
        yield slice(c0, c1), F.interpolate(part, size=(height, c1 - c0), mode="bilinear", align_corners=False)


def jaccard_lower_bound(mean_dice: float) -> float:
    """The smallest per-case mean Jaccard compatible with a per-case mean Dice: ``D / (2 - D)``.

    Per case ``J = D / (2 - D)``, a convex function of ``D`` on [0, 1]; Jensen's inequality gives
    ``mean(J) >= D / (2 - D)`` for ``D = mean(Dice)``, with equality when all cases have the same Dice.

    Args:
        mean_dice: Mean Dice as a fraction in [0, 1] (divide percentages by 100).

    Returns:
        The lower bound on the mean Jaccard, as a fraction.

    Raises:
        DataError: ``mean_dice`` is not a finite number in [0, 1].
    """
    if isinstance(mean_dice, bool) or not isinstance(mean_dice, numbers.Real) or not 0.0 <= mean_dice <= 1.0:
        raise DataError(f"mean_dice must be a fraction in [0, 1] (divide percentages by 100), got {mean_dice!r}.")
    return float(mean_dice) / (2.0 - float(mean_dice))


def dice_jaccard_consistent(mean_dice: float, mean_jaccard: float, *, tol: float = 5e-5) -> bool:
    """Whether a (mean Dice, mean Jaccard) pair can be per-case means of one prediction set.

    Requires ``D / (2 - D) <= J <= D`` up to ``tol`` (the default covers numbers rounded to two decimals in
    percent, e.g. "94.51"). Example: ISIC 2016's published 94.51 / 88.94 fails, since 0.9451 / 1.0549 = 0.8959.

    Args:
        mean_dice: Mean Dice as a fraction in [0, 1].
        mean_jaccard: Mean Jaccard as a fraction in [0, 1].
        tol: Allowed slack for rounding, as a fraction.

    Returns:
        ``True`` when the pair is possible, ``False`` when it is not.

    Raises:
        DataError: either value is not a fraction in [0, 1].
    """
    if isinstance(mean_jaccard, bool) or not isinstance(mean_jaccard, numbers.Real) or not 0.0 <= mean_jaccard <= 1.0:
        raise DataError(
            f"mean_jaccard must be a fraction in [0, 1] (divide percentages by 100), got {mean_jaccard!r}."
        )
    low = jaccard_lower_bound(mean_dice)
    return low - tol <= float(mean_jaccard) <= float(mean_dice) + tol


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise DataError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}.")


def error_auroc(score: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor,
                target: np.ndarray | torch.Tensor) -> float:
    """How well ``score`` (higher = more uncertain) separates wrongly from rightly classified pixels: AUROC.

    The probability that a random wrong pixel (``pred != target``) has a higher score than a random right one,
    ties counting one half. Computed by ranks: with all pixels ranked by score (ties given their average rank),
    ``AUROC = (R_wrong - n_wrong (n_wrong + 1) / 2) / (n_wrong * n_right)``, i.e. the Mann-Whitney ``U`` of the
    wrong pixels over ``n_wrong * n_right``, in float64. 1 = every error scores above every right pixel, 0.5 =
    no better than chance.

    Shape:
        ``score``, ``pred``, ``target``: the same shape (any; e.g. ``[H, W]`` or ``[D, H, W]`` at the label's
        native resolution). ``pred`` and ``target`` hold integer labels.

    Returns:
        The AUROC in [0, 1]; NaN when there is no wrong or no right pixel (undefined; :func:`summarize` leaves
        NaN out of the means).

    Raises:
        DataError: mismatched shapes, an empty input, float labels, or a non-finite or non-numeric score.
    """
    s = _as_array(score, "score")
    p = _as_label_tensor(pred, "pred").cpu().numpy()
    t = _as_label_tensor(target, "target").cpu().numpy()
    if not (s.shape == p.shape == t.shape) or s.size == 0:
        raise DataError(
            f"score, pred and target must have the same non-empty shape, got {s.shape}, {p.shape} and {t.shape}; "
            "resize the score map to the label's native size first."
        )
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise DataError(f"score must hold real numbers, got dtype {s.dtype}.")
    s = s.astype(np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise DataError("score holds NaN or infinite values; an uncertainty map must be finite everywhere.")
    wrong = (p != t).reshape(-1)
    n_wrong = int(wrong.sum())
    n_right = wrong.size - n_wrong
    if n_wrong == 0 or n_right == 0:
        return math.nan
    rank_sum = float(rankdata(s, method="average")[wrong].sum())  # ties share their average rank
    u = rank_sum - n_wrong * (n_wrong + 1) / 2.0
    return float(u / (float(n_wrong) * float(n_right)))


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised softmax entropy of class logits: ``-sum_k p_k ln p_k / ln K`` in [0, 1] (1 = uniform).

    The reference uncertainty any segmentation model has (the same formula as a UAFS head's ``H``, through
    :func:`dragsaw.uafs.entropy_map`).

    Shape:
        ``logits``: ``[B, K, *S]`` with ``K >= 2``; returns ``[B, 1, *S]`` of the same dtype (computed in float32
        or better).

    Raises:
        DataError: ``logits`` is not a floating tensor with a batch axis, ``K >= 2`` classes and a spatial axis.
    """
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point or logits.ndim < 3 \
            or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(
            f"logits must be a floating tensor [B, K, *S] with K >= 2 classes, got {shape}"
            + (f" of dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else "")
            + "; pass the network's class scores before the arg-max."
        )
    return entropy_map(logits)
