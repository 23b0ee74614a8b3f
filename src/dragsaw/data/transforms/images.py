"""2D training and evaluation transforms (MONAI dictionary transforms on keys ``"image"`` and ``"label"``).

Input dictionaries hold ``"image"``: float ``[C, H0, W0]`` in [0, 1] (as :func:`dragsaw.data.io.images.read_image`
returns it) and ``"label"``: integer ``[H0, W0]`` class indices. Outputs hold torch tensors ``"image"``: float32
``[C, H, W]`` normalised, and ``"label"``: int64 ``[H, W]``; other keys pass through.

Sizes are ``(H, W)`` here, as for arrays. Configs that follow the paper give ``input_size`` as (W, H) for images
(e.g. ISIC 2017 "512x384" is W=512, H=384); swap them before calling these functions.

Training pipeline (the paper's recipe, section 3.1 of METHOD.md, with the image scaled to [0, 1] before
normalisation): resize (image bilinear with anti-aliasing, mask nearest) -> random affine (scale 0.8-1.2 per
axis independently, translation 10% of the size, rotation +-90 deg, shear +-20 deg along W, zero padding, nearest
for the mask) -> horizontal and vertical flips (p = 0.5 each) -> ``(x - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.transforms import Compose, RandAffined, RandFlipd, Resized

from dragsaw.data.transforms.common import KEYS, LabelChannel, Pipeline, ToPlain, check_size
from dragsaw.data.transforms.intensity import intensity_augmentation, normalizer
from dragsaw.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GRAY_MEAN",
    "GRAY_STD",
    "NormalizeImage",
    "resize_transforms",
    "train_transforms",
    "eval_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.25,)
_IMAGE_MODES = ("bilinear", "bicubic", "area", "nearest-exact")


def _stats(value: float | Sequence[float] | None, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else (value,)))
    except (TypeError, ValueError):
        vals = ()
    if not vals or any(not math.isfinite(v) for v in vals) or (name == "std" and any(v <= 0 for v in vals)):
        raise ConfigError(f"{name} must be finite numbers (std > 0), one per channel or one for all, got {value!r}")
    return vals


class NormalizeImage:
    """``image -> (image - mean) / std`` per channel; returns a plain float32 torch tensor.

    Defaults depend on the channel count at call time: ImageNet mean/std for 3 channels, 0.5/0.25 for 1.

    Args:
        mean: Per-channel (or one shared) mean, or None for the defaults.
        std: Per-channel (or one shared) standard deviation, or None for the defaults.

    Shape:
        ``"image"``: ``[C, H, W]`` -> ``[C, H, W]``.
    """

    def __init__(self, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None):
        self.mean = _stats(mean, "mean")
        self.std = _stats(std, "std")

    def _pick(self, given: tuple[float, ...] | None, channels: int, name: str) -> tuple[float, ...]:
        if given is None:
            defaults = {3: (IMAGENET_MEAN, IMAGENET_STD), 1: (GRAY_MEAN, GRAY_STD)}
            if channels not in defaults:
                raise ConfigError(
                    f"no default {name} for {channels}-channel images; pass {name} with {channels} values"
                )
            return defaults[channels][0 if name == "mean" else 1]
        if len(given) not in (1, channels):
            raise ConfigError(
                f"{name} has {len(given)} values but the image has {channels} channels; give 1 or {channels} values"
            )
        return given * channels if len(given) == 1 else given

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image = torch.as_tensor(d["image"]).as_subclass(torch.Tensor).to(torch.float32)
        c = image.shape[0]
        mean = torch.tensor(self._pick(self.mean, c, "mean"), dtype=torch.float32).view(c, 1, 1)
        std = torch.tensor(self._pick(self.std, c, "std"), dtype=torch.float32).view(c, 1, 1)
        d["image"] = ((image - mean) / std).contiguous()
        return d


def resize_transforms(input_size: Sequence[int], image_mode: str = "bilinear") -> Compose:
    """The deterministic first step of both pipelines: resize image and mask to ``input_size``.

    Args:
        input_size: Output size ``(H, W)``.
        image_mode: Image interpolation: "bilinear" (anti-aliased when downsampling), "bicubic", "area" or
            "nearest-exact". The mask always uses nearest neighbour ("nearest-exact": pixel centres).

    Returns:
        A MONAI ``Compose`` mapping ``{"image": [C, H0, W0], "label": [H0, W0]}`` to torch tensors
        ``{"image": float32 [C, H, W], "label": int64 [H, W]}`` (no normalisation). A missing ``"label"`` is allowed.
    """
    size = check_size(input_size, 2, "input_size")
    if image_mode not in _IMAGE_MODES:
        raise ConfigError(f"image_mode must be one of {_IMAGE_MODES}, got {image_mode!r}")
    resize = Resized(
        keys=KEYS,
        spatial_size=size,
        mode=(image_mode, "nearest-exact"),
        anti_aliasing=(image_mode != "area", False),
        allow_missing_keys=True,
    )
    return Pipeline([LabelChannel(add=True, spatial_dims=2), resize, LabelChannel(add=False, spatial_dims=2), ToPlain()])


def train_transforms(
    input_size: Sequence[int],
    *,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: float = 0.1,
    rotate_deg: float = 90.0,
    shear_deg: float = 20.0,
    flip_prob: float = 0.5,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    image_mode: str = "bilinear",
    seed: int | None = None,
    normalization: str = "fixed",
    intensity: bool = False,
) -> Compose:
    """Training pipeline: resize, random affine, random flips, normalisation, (optionally) intensity augmentation.

    Args:
        input_size: Output size ``(H, W)`` (note: (H, W), not the (W, H) of the paper's configs).
        scale: Range of the scale factor, drawn independently per axis.
        translate: Maximal translation as a fraction of the size, per axis.
        rotate_deg: Rotation drawn from ``[-rotate_deg, rotate_deg]`` degrees.
        shear_deg: Shear angle (along W) drawn from ``[-shear_deg, shear_deg]`` degrees.
        flip_prob: Probability of each of the horizontal and the vertical flip.
        mean: Normalisation mean (None: ImageNet for RGB, 0.5 for grayscale).
        std: Normalisation std (None: ImageNet for RGB, 0.25 for grayscale).
        image_mode: Image interpolation of the resize: "bilinear" (anti-aliased), "bicubic", "area" or
            "nearest-exact". The mask always uses nearest neighbour.
        seed: Seed of the random transforms (``Compose.set_random_state``); None leaves MONAI's default state.
        normalization: ``"fixed"`` (``mean``/``std``) or ``"zscore"`` (per image and channel), see
            :func:`dragsaw.data.transforms.intensity.normalizer`.
        intensity: add nnU-Net's intensity augmentations after the normalisation
            (:func:`dragsaw.data.transforms.intensity.intensity_augmentation`).

    Returns:
        A MONAI ``Compose`` mapping ``{"image": [C, H0, W0], "label": [H0, W0], ...}`` to
        ``{"image": float32 [C, H, W], "label": int64 [H, W], ...}``.

    Raises:
        ConfigError: invalid sizes, ranges or probabilities.
    """
    h, w = check_size(input_size, 2, "input_size")
    if not (isinstance(scale, Sequence) and len(scale) == 2 and 0 < float(scale[0]) <= float(scale[1])):
        raise ConfigError(f"scale must be (min, max) with 0 < min <= max, got {scale!r}")
    lo, hi = float(scale[0]), float(scale[1])
    limits = {"translate": (translate, 1.0), "flip_prob": (flip_prob, 1.0), "rotate_deg": (rotate_deg, 180.0),
              "shear_deg": (shear_deg, 89.0)}  # fmt: skip
    for name, (value, top) in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
            raise ConfigError(f"{name} must be a number in [0, {top:g}], got {value!r}")
    pipeline = Pipeline(
        [
            resize_transforms((h, w), image_mode),
            LabelChannel(add=True, spatial_dims=2),
            RandAffined(
                keys=KEYS,
                spatial_size=(h, w),
                prob=1.0,
                rotate_range=(math.radians(rotate_deg),),
                shear_range=(math.tan(math.radians(shear_deg)),),
                translate_range=(translate * h, translate * w),
                scale_range=((lo - 1.0, hi - 1.0), (lo - 1.0, hi - 1.0)),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                cache_grid=True,
            ),
            RandFlipd(keys=KEYS, prob=flip_prob, spatial_axis=1),  # horizontal: along W
            RandFlipd(keys=KEYS, prob=flip_prob, spatial_axis=0),  # vertical: along H
            LabelChannel(add=False, spatial_dims=2),
            normalizer(normalization, NormalizeImage(mean, std)),
            *(intensity_augmentation(2) if intensity else []),
            ToPlain(),
        ]
    )
    if seed is not None:
        pipeline.set_random_state(seed=int(seed))
    return pipeline


def eval_transforms(
    input_size: Sequence[int],
    *,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    image_mode: str = "bilinear",
    normalization: str = "fixed",
) -> Compose:
    """Evaluation pipeline: resize (image ``image_mode``, mask nearest) and normalisation only.

    Args:
        input_size: Output size ``(H, W)``.
        mean: Normalisation mean (None: ImageNet for RGB, 0.5 for grayscale).
        std: Normalisation std (None: ImageNet for RGB, 0.25 for grayscale).
        image_mode: Image interpolation ("bilinear" anti-aliased, "bicubic", "area" or "nearest-exact").
        normalization: ``"fixed"`` or ``"zscore"``, as for :func:`train_transforms`.

    Returns:
        A MONAI ``Compose``; shapes as for :func:`train_transforms`. A missing ``"label"`` is allowed.
    """
    return Pipeline([resize_transforms(input_size, image_mode), normalizer(normalization, NormalizeImage(mean, std)),
                      ToPlain()])
