"""Intensity: per-image normalisation and the intensity augmentations nnU-Net applies, for 2D and 3D alike.

A model that learns "dark means lung" from one hospital's scanner fails on the next hospital's images. Two
remedies, both MONAI dictionary transforms on ``"image"`` (``[C, *S]``, any ``spatial_dims``):

* :func:`normalizer` ``"zscore"``: every image and channel to mean 0 and standard deviation 1 (what nnU-Net does
  for every modality but CT). The network input is then the same for ``a * x + b`` as for ``x`` (any ``a > 0``):
  global brightness and contrast changes vanish before the network sees them. ``"fixed"`` keeps one dataset-wide
  ``(x - mean) / std`` (the paper's 2D recipe, ImageNet statistics for RGB).
* :func:`intensity_augmentation`: brightness (multiplicative), contrast (around the mean), gamma, Gaussian noise,
  Gaussian blur and simulated low resolution, each drawn with nnU-Net's probabilities and ranges, applied to the
  normalised image during training, so that the network also meets the shifts normalisation cannot remove
  (gamma, blur, noise, resolution).

:func:`intensity_shift` applies one named, deterministic shift (``gamma-0.5``, ``contrast-0.5``, ``brightness+0.2``,
``blur-1.5``, ...) to an image in its file's value range: the controlled shifts ``dragsaw evaluate --shift`` and
the robustness tests score models under.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from monai.transforms import (
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
)

from dragsaw.errors import ConfigError

__all__ = ["LINEAR_MODES", "NORMALIZATIONS", "SHIFTS", "intensity_augmentation", "intensity_shift", "normalizer",
           "parse_shift"]

NORMALIZATIONS = ("fixed", "zscore")
"""``data.normalization`` values: one dataset-wide mean/std, or per image and channel."""

SHIFTS = ("gamma", "contrast", "brightness", "blur")
"""Kinds of :func:`intensity_shift`: ``gamma-G``, ``contrast-F``, ``brightness+F`` / ``brightness-F``, ``blur-S``."""


LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""Linear interpolation mode of ``torch.nn.functional.interpolate`` by number of spatial axes."""


def normalizer(kind: str, fixed):
    """The normalisation step of a pipeline.

    Args:
        kind: ``"zscore"`` (per image and channel; constant channels become 0) or ``"fixed"`` (``fixed``).
        fixed: the transform used for ``"fixed"`` (e.g. :class:`dragsaw.data.transforms.images.NormalizeImage`).

    Returns:
        A callable on dictionaries with ``"image"`` ``[C, *S]`` returning float32 ``[C, *S]``.

    Raises:
        ConfigError: an unknown ``kind``.
    """
    if kind not in NORMALIZATIONS:
        raise ConfigError(f"data.normalization must be one of {list(NORMALIZATIONS)}, got {kind!r}; 'zscore' scales "
                          "every image to mean 0 and std 1 (images without a fixed intensity scale).")
    if kind == "fixed":
        return fixed
    return NormalizeIntensityd(keys="image", channel_wise=True, dtype=torch.float32)


def intensity_augmentation(spatial_dims: int) -> list:
    """nnU-Net's intensity augmentations as MONAI transforms on ``"image"`` (a normalised ``[C, *S]`` tensor).

    In order, each with its own probability per sample: Gaussian noise (p 0.1, std drawn from [0, 0.1]), Gaussian
    blur (p 0.2, sigma in [0.5, 1] per axis), brightness ``x * f`` (p 0.15, f in [0.75, 1.25]), contrast around the
    mean (p 0.15, factor in [0.75, 1.25], value range kept), simulated low resolution (p 0.25, down to 0.5-1 of the
    size and back), gamma (p 0.3, gamma in [0.7, 1.5], mean and std kept).

    Args:
        spatial_dims: 2 or 3.

    Raises:
        ConfigError: ``spatial_dims`` not 2 or 3.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"intensity_augmentation: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    sigma = {f"sigma_{a}": (0.5, 1.0) for a in "xyz"[:spatial_dims]}
    return [
        RandGaussianNoised(keys="image", prob=0.1, std=0.1, sample_std=True),
        RandGaussianSmoothd(keys="image", prob=0.2, **sigma),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.15, preserve_range=True),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0),
                                   upsample_mode=LINEAR_MODES[spatial_dims]),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
    ]


_SHIFT = re.compile(r"^(gamma|contrast|blur)-(\d+(?:\.\d+)?)$|^(brightness)([+-]\d+(?:\.\d+)?)$")


def parse_shift(name: str) -> tuple[str, float]:
    """``("gamma", 0.5)`` for ``"gamma-0.5"``, ``("brightness", -0.2)`` for ``"brightness-0.2"``.

    Raises:
        ConfigError: a name of another form, naming the forms.
    """
    match = _SHIFT.match(str(name).strip())
    forms = "gamma-G (e.g. gamma-0.5), contrast-F (contrast-0.5 halves it), brightness+F / brightness-F " \
            "(brightness+0.2 is 20% brighter), blur-S (Gaussian blur of S pixels)"
    if not match:
        raise ConfigError(f"unknown intensity shift {name!r}; use {forms}.")
    kind = match.group(1) or match.group(3)
    value = float(match.group(2) if match.group(1) else match.group(4))
    if (kind in ("gamma", "contrast") and value <= 0) or value == 0 and kind == "brightness":
        raise ConfigError(f"intensity shift {name!r}: the amount must be > 0 (brightness: non-zero); use {forms}.")
    return kind, value


def intensity_shift(image: torch.Tensor, name: str, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """One deterministic acquisition shift of an image in its value range (``[0, 1]`` for dragsaw's 2D reader).

    * ``gamma-G``: ``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** G`` (G < 1 brightens the mid-tones).
    * ``contrast-F``: ``mean + F * (x - mean)`` per channel (F = 0.5 halves the contrast).
    * ``brightness+F``: ``x * (1 + F)`` (F = -0.2: 20% darker).
    * ``blur-S``: a Gaussian blur of standard deviation S pixels along each spatial axis.

    Results are clipped to ``value_range``, as a detector's output would be.

    Shape:
        ``image`` ``[C, *S]`` (S 2D or 3D) -> float32 ``[C, *S]``.

    Raises:
        ConfigError: an unknown shift (see :func:`parse_shift`) or an image of another rank.
    """
    kind, value = parse_shift(name)
    x = torch.as_tensor(image).as_subclass(torch.Tensor).to(torch.float32)
    if x.ndim not in (3, 4):
        raise ConfigError(f"intensity_shift: image must be [C, H, W] or [C, X, Y, Z], got shape {tuple(x.shape)}.")
    lo, hi = (float(v) for v in value_range)
    if kind == "gamma":
        out = lo + (hi - lo) * ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1) ** value
    elif kind == "contrast":
        mean = x.flatten(1).mean(1).view(-1, *[1] * (x.ndim - 1))
        out = mean + value * (x - mean)
    elif kind == "brightness":
        out = x * (1.0 + value)
    else:
        out = _gaussian_blur(x, value)
    return out.clamp(lo, hi)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std ``sigma`` pixels, kernel radius 3 sigma, edges repeated) of ``[C, *S]``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = x[None]  # [1, C, *S]
    dims = x.ndim - 1
    conv = getattr(F, f"conv{dims}d")
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(x.shape[0], 1, *[1] * dims)
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=x.shape[0])
    return out[0]
