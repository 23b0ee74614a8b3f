"""3D preprocessing and training transforms (MONAI dictionary transforms on keys ``"image"`` and ``"label"``).

Preprocessing (:func:`preprocess_transforms`, nnU-Net's order: normalise, then resample):

1. load with nibabel, channels first, values checked (:class:`dragsaw.data.io.volumes.LoadVolumed`);
2. reorient to RAS (``Orientationd``: axis permutations and flips only, no interpolation);
3. normalise each channel by its modality (:class:`NormalizeModalities`):

   * ``"CT"`` (any letter case): clip to the dataset's foreground [0.5, 99.5] percentiles, then z-score with the
     dataset's foreground mean and std (from :func:`dragsaw.data.statistics.ct_statistics`);
   * anything else (MRI and other relative intensities): per-volume z-score over the non-zero region (voxels where
     any channel is non-zero, the same region for every channel), zero outside;

4. resample to ``target_spacing`` (``Spacingd``: image trilinear, label nearest).

Training (:func:`train_transforms`) draws one patch per call from a preprocessed volume (:class:`RandPatchd`):
centred on a foreground voxel with probability ``pos_fraction`` (nnU-Net: 1/3), else on a random voxel, and
resampled straight from the whole volume through a random rotation and per-axis scaling (MONAI ``Affine``), so
that rotated and zoomed-out patches show real voxels rather than padding, as in nnU-Net; then flips on every axis,
intensity scaling and shift, and Gaussian noise. MONAI's ``RandCropByPosNegLabeld`` is not used: for rotation
and zoom-out it would need an enlarged crop, and it pads a copy of the whole volume to that size on every draw
(about 2 s per 128^3 patch of a 4 x 240 x 240 x 155 volume on one core, against about 0.25 s here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Affine,
    Orientationd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Spacingd,
)

from dragsaw.data.transforms.common import KEYS, LabelChannel, Pipeline, ToPlain, as_float_tuple, check_size
from dragsaw.data.transforms.intensity import intensity_augmentation
from dragsaw.data.io.volumes import NATIVE_LABEL_KEY, LoadVolumed
from dragsaw.errors import ConfigError

__all__ = [
    "CT_KEYS",
    "is_ct",
    "check_modalities",
    "NormalizeModalities",
    "preprocess_transforms",
    "RandPatchd",
    "train_transforms",
]

CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")
"""Keys of one channel's entry in ``ct_stats``."""

_RAS = (("L", "R"), ("P", "A"), ("I", "S"))
_EPS = 1e-8


def is_ct(modality: str) -> bool:
    """True for the modality names normalised with dataset-wide CT statistics (``"CT"``, any letter case)."""
    return str(modality).strip().upper() == "CT"


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence) or not modalities:
        raise ConfigError(f"modalities must be a non-empty list of names (e.g. ['MRI'], ['CT']), got {modalities!r}")
    return tuple(str(m) for m in modalities)


def _check_ct_stats(modalities: tuple[str, ...], ct_stats: Mapping | None) -> dict[int, dict[str, float]]:
    """Per CT channel index, the four statistics as floats (string keys from JSON accepted)."""
    ct_channels = [c for c, m in enumerate(modalities) if is_ct(m)]
    if not ct_channels:
        return {}
    if ct_stats is None:
        raise ConfigError(
            f"modalities {list(modalities)} include CT channel(s) {ct_channels} but ct_stats is None",
            fix="compute them with dragsaw.data.ct_statistics(train_cases) and pass ct_stats=...",
        )
    out: dict[int, dict[str, float]] = {}
    for c in ct_channels:
        entry = ct_stats.get(c, ct_stats.get(str(c))) if isinstance(ct_stats, Mapping) else None
        try:
            values = {k: float(entry[k]) for k in CT_KEYS}  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            values = {}
        if not values or not all(math.isfinite(v) for v in values.values()) or values["std"] < 0:
            raise ConfigError(
                f"ct_stats[{c}] must hold finite {list(CT_KEYS)} (std >= 0) for CT channel {c}, got {entry!r}",
                fix="use the output of dragsaw.data.ct_statistics",
            )
        out[c] = values
    return out


class NormalizeModalities:
    """Normalise each channel of ``"image"`` by its modality (see the module docstring).

    Args:
        modalities: One name per channel; ``"CT"`` channels use ``ct_stats``, all others the per-volume z-score.
        ct_stats: ``{channel index: {"mean", "std", "percentile_00_5", "percentile_99_5"}}`` for the CT channels
            (as :func:`dragsaw.data.statistics.ct_statistics` returns it; string keys accepted).

    Shape:
        ``"image"``: ``[C, *S]`` -> float32 ``[C, *S]``, ``C == len(modalities)``.

    Raises:
        ConfigError: CT channels without statistics, or an image whose channel count differs from ``modalities``.
    """

    def __init__(self, modalities: Sequence[str], ct_stats: Mapping | None = None) -> None:
        self.modalities = check_modalities(modalities)
        self.ct_stats = _check_ct_stats(self.modalities, ct_stats)

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        image = d["image"]
        if image.shape[0] != len(self.modalities):
            raise ConfigError(
                f"the image has {image.shape[0]} channel(s) but {len(self.modalities)} modalities were given "
                f"({list(self.modalities)})",
                fix="pass one modality name per channel",
            )
        x = (image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)).to(torch.float32)
        out = torch.empty_like(x)
        region = (x != 0).any(dim=0)
        n = int(region.sum())
        for c in range(len(self.modalities)):
            if c in self.ct_stats:
                s = self.ct_stats[c]
                clipped = x[c].clamp(s["percentile_00_5"], s["percentile_99_5"])
                out[c] = (clipped - s["mean"]) / max(s["std"], _EPS)
            elif n == 0:
                out[c] = 0.0
            else:
                vals = x[c][region].to(torch.float64)
                mean, std = vals.mean(), vals.std(correction=0)
                out[c] = torch.where(region, ((x[c] - mean) / max(float(std), _EPS)).to(torch.float32), 0.0)
        if isinstance(image, MetaTensor):  # keep the geometry for the resampling that follows
            out = MetaTensor(out, meta=dict(image.meta), applied_operations=list(image.applied_operations))
        d["image"] = out
        return d


class _Finalize:
    """Plain tensors out (image float32 ``[C, *S]``, label int64 ``[*S]``); preprocessed geometry into ``"meta"``."""

    def __init__(self, target_spacing: tuple[float, ...]) -> None:
        self.target_spacing = target_spacing

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        image = d["image"]
        meta = dict(d.get("meta", {}))
        meta["affine_preprocessed"] = np.asarray(image.affine, dtype=np.float64)
        meta["shape_preprocessed"] = tuple(int(s) for s in image.shape[1:])
        meta["spacing"] = self.target_spacing
        d["meta"] = meta
        d["image"] = image.as_tensor().to(torch.float32).contiguous()
        if "label" in d:
            d["label"] = d["label"].as_tensor()[0].round().to(torch.int64).contiguous()
        if NATIVE_LABEL_KEY in d:
            d["label_native"] = d.pop(NATIVE_LABEL_KEY)
        return d


def preprocess_transforms(
    target_spacing: Sequence[float],
    modalities: Sequence[str],
    ct_stats: Mapping | None = None,
    *,
    num_classes: int | None = None,
    value_map: Mapping[int, int] | None = None,
    keep_native: bool = False,
) -> Pipeline:
    """The deterministic pipeline from files to a preprocessed volume (see the module docstring).

    Args:
        target_spacing: Output voxel spacing in mm along the RAS axes (e.g. ``dataset_properties(...)
            ["target_spacing"]``).
        modalities: One name per channel (``"CT"`` or anything else).
        ct_stats: Statistics of the CT channels (:func:`dragsaw.data.statistics.ct_statistics`); required when a
            channel is CT.
        num_classes: K (background included) for the label value check; None accepts any class indices.
        value_map: Optional {stored label value: class index}.
        keep_native: Also output ``"label_native"`` (int64, the file's own geometry) for evaluation.

    Returns:
        A MONAI ``Compose`` taking ``{"image": path or [channel paths], "label": path (optional), ...}``
        (:func:`dragsaw.data.io.volumes.case_to_dict`) and returning ``{"image": float32 [C, *S], "label": int64 [*S],
        "meta": {"affine", "shape", "path", "affine_preprocessed", "shape_preprocessed", "spacing"}, ...}``.

    Raises:
        ConfigError: bad spacing, modalities or CT statistics.
        DataError: (when called) unreadable files, NaN/Inf voxels, unexpected label values.
    """
    spacing = as_float_tuple("target_spacing", target_spacing)
    keys = KEYS
    return Pipeline(
        [
            LoadVolumed(num_classes, value_map, keep_native),
            Orientationd(keys=keys, axcodes="RAS", labels=_RAS, allow_missing_keys=True),
            NormalizeModalities(modalities, ct_stats),
            Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest"), padding_mode="border",
                     dtype=np.float32, allow_missing_keys=True),  # fmt: skip
            _Finalize(spacing),
        ]
    )


class RandPatchd(Randomizable):
    """Draw one patch per call straight from a whole volume: a centre, then one MONAI ``Affine`` resampling.

    The centre is a random foreground voxel (label > 0) with probability ``pos_fraction``, else a uniformly random
    voxel (nnU-Net's foreground oversampling). The patch is shifted to lie inside the volume where the volume is
    large enough (the chosen voxel stays inside it) and centred, zero-padded, where it is not. With probability
    ``affine_prob`` the sampling grid is rotated about the patch centre (uniform in ``[-rotate_deg, rotate_deg]``
    about each axis) and scaled per axis (uniform in ``scale``; > 1 zooms out). Sampling the grid from the whole
    volume needs no enlarged crop and no padded copy of the volume: areas outside it read zeros.

    Args:
        patch_size: ``(X, Y, Z)``.
        pos_fraction: Probability of a foreground-centred patch (volumes without foreground always use a random
            voxel).
        rotate_deg: Largest rotation about each axis, degrees.
        scale: ``(min, max)`` scale factor per axis.
        affine_prob: Probability of the rotation + scaling; otherwise the patch is a plain crop.

    Shape:
        ``"image"`` ``[C, *S]`` -> ``[C, *P]``; ``"label"`` ``[1, *S]`` -> ``[1, *P]`` (nearest neighbour).
    """

    def __init__(
        self, patch_size: Sequence[int], pos_fraction: float, rotate_deg: float, scale: tuple[float, float],
        affine_prob: float,
    ) -> None:  # fmt: skip
        self.patch = np.array(check_size(patch_size, 3, "patch_size"))
        self.pos_fraction, self.affine_prob = float(pos_fraction), float(affine_prob)
        self.rotate, self.scale = math.radians(float(rotate_deg)), (float(scale[0]), float(scale[1]))
        self._start = np.zeros(3, dtype=int)
        self._rotate, self._scale = (0.0,) * 3, (1.0,) * 3

    def randomize(self, label: torch.Tensor) -> None:  # type: ignore[override]
        """Draw the patch start and the affine parameters for a label ``[1, *S]``."""
        shape = np.array(label.shape[1:])
        use_fg = self.R.rand() < self.pos_fraction
        fg = np.flatnonzero(np.asarray(label[0] > 0)) if use_fg else np.empty(0)
        if fg.size:
            centre = np.array(np.unravel_index(fg[self.R.randint(fg.size)], tuple(shape)))
        else:
            centre = np.array([self.R.randint(n) for n in shape])
        start = centre - self.patch // 2
        fits = shape >= self.patch
        self._start = np.where(fits, np.clip(start, 0, np.maximum(shape - self.patch, 0)), (shape - self.patch) // 2)
        if self.R.rand() < self.affine_prob:
            self._rotate = tuple(float(v) for v in self.R.uniform(-self.rotate, self.rotate, 3))
            self._scale = tuple(float(v) for v in self.R.uniform(self.scale[0], self.scale[1], 3))
        else:
            self._rotate, self._scale = (0.0,) * 3, (1.0,) * 3

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        self.randomize(d["label"])
        shape = np.array(d["label"].shape[1:])
        if all(r == 0.0 for r in self._rotate) and all(c == 1.0 for c in self._scale):  # a plain crop: slice
            src = tuple(slice(max(a, 0), min(a + p, n)) for a, p, n in zip(self._start, self.patch, shape))
            dst = (slice(None),) + tuple(slice(r.start - a, r.stop - a) for r, a in zip(src, self._start))
            for key in ("image", "label"):
                x = torch.as_tensor(d[key])
                out = x.new_zeros((x.shape[0], *(int(v) for v in self.patch)))
                out[dst] = x[(slice(None),) + src]
                d[key] = out
            return d
        shift = self._start + (self.patch - 1) / 2.0 - (shape - 1) / 2.0  # patch centre relative to volume centre
        affine = Affine(rotate_params=self._rotate, scale_params=self._scale, translate_params=shift.tolist(),
                        spatial_size=tuple(int(v) for v in self.patch), padding_mode="zeros", image_only=True)  # fmt: skip
        d["image"] = affine(d["image"], mode="bilinear")
        d["label"] = affine(d["label"], mode="nearest")
        return d


def train_transforms(
    patch_size: Sequence[int],
    *,
    pos_fraction: float = 1.0 / 3.0,
    rotate_deg: float = 30.0,
    scale: tuple[float, float] = (0.7, 1.4),
    affine_prob: float = 0.35,
    flip_prob: float = 0.5,
    intensity_scale: float = 0.25,
    intensity_shift: float = 0.1,
    intensity_prob: float = 0.15,
    noise_std: float = 0.1,
    noise_prob: float = 0.15,
    seed: int | None = None,
    intensity: bool = False,
) -> Pipeline:
    """Training pipeline: one augmented patch per call from a preprocessed volume.

    Args:
        patch_size: Patch size ``(X, Y, Z)`` in preprocessed voxels.
        pos_fraction: Share of patches centred on a foreground voxel (the others on a random voxel, and they may
            contain foreground too); nnU-Net's oversampling is 1/3.
        rotate_deg: Rotation about each axis drawn from ``[-rotate_deg, rotate_deg]`` degrees.
        scale: ``(min, max)`` scale factor per axis (>1 zooms out), drawn independently per axis.
        affine_prob: Probability of the rotation + scaling (nnU-Net applies each with p = 0.2).
        flip_prob: Probability of the flip of each axis.
        intensity_scale: Multiplicative intensity change drawn from ``[-s, s]`` (``x * (1 + f)``).
        intensity_shift: Additive intensity change drawn from ``[-s, s]``.
        intensity_prob: Probability of each intensity change.
        noise_std: Gaussian noise whose std is drawn from ``[0, noise_std]``.
        noise_prob: Probability of the noise.
        seed: Seed of every random transform (``Compose.set_random_state``); None leaves MONAI's default state.
        intensity: nnU-Net's full set of intensity augmentations
            (:func:`dragsaw.data.transforms.intensity.intensity_augmentation`, as in 2D) instead of the intensity scale,
            shift and noise above.

    Returns:
        A MONAI ``Compose`` mapping ``{"image": float [C, *S], "label": int [*S], ...}`` to
        ``{"image": float32 [C, *P], "label": int64 [*P], ...}``, ``P = patch_size``; volumes smaller than the patch
        are zero-padded (label 0).

    Raises:
        ConfigError: invalid sizes, ranges or probabilities.
    """
    patch = check_size(patch_size, 3, "patch_size")
    lo, hi = (float(v) for v in scale) if isinstance(scale, Sequence) and len(scale) == 2 else (0.0, -1.0)
    if not 0 < lo <= hi:
        raise ConfigError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
    limits = {"pos_fraction": (pos_fraction, 1.0), "rotate_deg": (rotate_deg, 180.0), "affine_prob": (affine_prob, 1.0),
              "flip_prob": (flip_prob, 1.0), "intensity_scale": (intensity_scale, 1.0),
              "intensity_shift": (intensity_shift, 10.0), "intensity_prob": (intensity_prob, 1.0),
              "noise_std": (noise_std, 10.0), "noise_prob": (noise_prob, 1.0)}  # fmt: skip
    for name, (value, top) in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise ConfigError(f"{name} must be a number in [0, {top:g}], got {value!r}")
    keys = KEYS
    pipeline = Pipeline(
        [
            LabelChannel(add=True, spatial_dims=3),
            RandPatchd(patch, pos_fraction, rotate_deg, (lo, hi), affine_prob),
            *(RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)),
            *(intensity_augmentation(3) if intensity else [
                RandScaleIntensityd(keys="image", factors=intensity_scale, prob=intensity_prob),
                RandShiftIntensityd(keys="image", offsets=intensity_shift, prob=intensity_prob),
                RandGaussianNoised(keys="image", prob=noise_prob, std=noise_std, sample_std=True),
            ]),
            LabelChannel(add=False, spatial_dims=3),
            ToPlain(),
        ]
    )
    if seed is not None:
        pipeline.set_random_state(seed=int(seed))
    return pipeline
