"""Post-processing of predicted label maps: each class's largest connected component, or its components without
the small ones."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


__all__ = [
    "POSTPROCESS", "LARGEST_COMPONENT_CONNECTIVITY", "SMALL_COMPONENT_FRACTION", "keep_largest_components",
    "remove_small_components", "postprocess_prediction", "check_postprocess", "AUTO", "choose_postprocess",
]


POSTPROCESS = ("none", "largest-component", "remove-small")
"""``--postprocess`` choices, applied to the arg-max in the file's own geometry, for each foreground class
independently: ``largest-component`` keeps its largest connected component (:func:`keep_largest_components`);
``remove-small`` removes its components smaller than :data:`SMALL_COMPONENT_FRACTION` of its largest one
(:func:`remove_small_components`), for anatomy of several parts in one class (two lungs, two kidneys)."""

AUTO = "auto"
"""``evaluate --postprocess auto``: the post-processing of :data:`POSTPROCESS` with the best mean foreground Dice on
the validation split, ``none`` unless another is strictly better (:func:`choose_postprocess`)."""

SMALL_COMPONENT_FRACTION = 0.1
"""``remove-small``: a component is removed when it has fewer than this fraction of the pixels (voxels) of its
class's largest component."""

LARGEST_COMPONENT_CONNECTIVITY = 1
"""Neighbourhood of ``largest-component``: 1 = pixels/voxels sharing a face (4-neighbourhood in 2D,
6-neighbourhood in 3D; MONAI's ``connectivity=1``, scipy's and nnU-Net's default structure). Parts that touch only
at an edge or a corner are separate components, so the smaller of them is removed."""


def keep_largest_components(pred, num_classes: int):
    """For each foreground class 1..K-1, keep its largest connected component (face connectivity) of the label map
    ``pred`` (``[H, W]`` or ``[X, Y, Z]``, a tensor or an array); removed pixels become background (0). Returns the
    same type, dtype and shape. MONAI's ``KeepLargestConnectedComponent(applied_labels=1..K-1, independent=True,
    connectivity=1)``."""
    from monai.transforms import KeepLargestConnectedComponent

    if num_classes < 2:
        return pred
    keep = KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), is_onehot=False,
                                         independent=True, connectivity=LARGEST_COMPONENT_CONNECTIVITY)
    is_tensor = isinstance(pred, torch.Tensor)
    labels = torch.as_tensor(np.asarray(pred) if not is_tensor else pred)
    out = keep(labels[None].clone())[0]
    out = torch.as_tensor(out).to(labels.dtype)  # a MetaTensor from MONAI: plain tensor of the input's dtype
    out = out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
    return out if is_tensor else out.numpy().astype(np.asarray(pred).dtype, copy=False)


def remove_small_components(pred, num_classes: int, fraction: float = SMALL_COMPONENT_FRACTION):
    """For each foreground class 1..K-1 of the label map ``pred`` (``[H, W]`` or ``[X, Y, Z]``, a tensor or an
    array), remove its connected components (face connectivity, as :data:`LARGEST_COMPONENT_CONNECTIVITY`) with
    fewer than ``fraction`` times the pixels of its largest component; removed pixels become background (0).
    Returns the same type, dtype and shape."""
    from scipy import ndimage

    is_tensor = isinstance(pred, torch.Tensor)
    array = pred.cpu().numpy() if is_tensor else np.asarray(pred)
    out = array.copy()
    structure = ndimage.generate_binary_structure(array.ndim, LARGEST_COMPONENT_CONNECTIVITY)
    for k in range(1, num_classes):
        components, count = ndimage.label(array == k, structure=structure)
        if count < 2:
            continue
        sizes = np.bincount(components.ravel())[1:]  # pixels of components 1..count
        small = np.flatnonzero(sizes < fraction * sizes.max()) + 1
        out[np.isin(components, small)] = 0
    return torch.from_numpy(out).to(pred.device) if is_tensor else out


def postprocess_prediction(pred, num_classes: int, postprocess: str = "none"):
    """``pred`` after ``postprocess`` (one of :data:`POSTPROCESS`).

    Raises:
        ConfigError: an unknown ``postprocess``.
    """
    if postprocess == "none" or postprocess is None:
        return pred
    if postprocess == "largest-component":
        return keep_largest_components(pred, num_classes)
    if postprocess == "remove-small":
        return remove_small_components(pred, num_classes)
    raise ConfigError(f"--postprocess {postprocess!r} is not a post-processing; use one of {', '.join(POSTPROCESS)}")


def check_postprocess(postprocess: str | None) -> str:
    """``postprocess`` (None: ``"none"``) when it is one of :data:`POSTPROCESS`.

    Raises:
        ConfigError: naming the value and the choices.
    """
    postprocess = postprocess or "none"
    if postprocess not in POSTPROCESS:
        raise ConfigError(f"--postprocess {postprocess!r} is not a post-processing; use one of "
                          f"{', '.join(POSTPROCESS)}")
    return postprocess


def choose_postprocess(per_case: list[dict]) -> dict:
    """The post-processing to use, from validation cases scored by :func:`dragsaw.inference.evaluate_loader` with
    ``postprocess="none"`` and every other choice of :data:`POSTPROCESS` as ``alternatives``.

    Args:
        per_case: the validation cases' metrics, each with ``dice_fg`` and ``dice_fg@<name>`` for the others.

    Returns:
        ``{"chosen": name, "on": "val", "cases": n, "mean_dice_fg": {name: mean over cases}, "rule": ...}``: the
        highest mean, ``none`` unless another is strictly higher (cases whose Dice is NaN, e.g. empty masks, are
        left out of every mean alike).

    Raises:
        ConfigError: no validation case, or a case without the alternatives' scores.
    """
    if not per_case:
        raise ConfigError("--postprocess auto chooses on the validation split, which has no case here; choose "
                          f"one of {', '.join(POSTPROCESS)}")
    names = list(POSTPROCESS)
    keys = {name: "dice_fg" if name == "none" else f"dice_fg@{name}" for name in names}
    if any(key not in case for case in per_case for key in keys.values()):
        raise ConfigError("choose_postprocess needs every case scored with the alternatives "
                          f"{[k for k in keys.values() if k != 'dice_fg']} (evaluate_loader(..., alternatives=...))")
    rows = [case for case in per_case if all(case[k] == case[k] for k in keys.values())]  # drop NaN rows
    means = {name: float(np.mean([case[keys[name]] for case in rows])) if rows else float("nan") for name in names}
    best = max((n for n in names if n != "none" and means[n] == means[n]), key=means.get, default="none")
    chosen = best if best != "none" and means[best] > means["none"] else "none"
    return {"chosen": chosen, "on": "val", "cases": len(rows), "mean_dice_fg": means,
            "rule": "highest mean foreground Dice on the validation cases; none unless another is strictly higher"}

