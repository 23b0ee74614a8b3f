"""One forward pass: logits at the input size (one pass, or sliding windows over a volume), optional test-time
mirroring, and the UAFS uncertainty map recorded on the way."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from ..data.transforms.intensity import LINEAR_MODES
from ..errors import ConfigError
from ..plan import Plan
from ..uafs import UncertaintySelect, uncertainty_maps
from .device import PRECISIONS, autocast_dtype


__all__ = ["InferenceSettings", "forward_with_uncertainty", "infer", "record_uncertainty", "finest_uncertainty"]


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a whole image or volume.

    2D images go through the network at once; volumes (``spatial_dims=3``) through MONAI's sliding-window
    inference with Gaussian blending (``roi_size`` windows, ``overlap``, ``sw_batch_size`` windows per forward).
    ``mirror`` (test-time augmentation, 2D and 3D): the logits and the uncertainty map are averaged over the input
    and its flips along each spatial axis, one axis at a time (1 + ``spatial_dims`` passes instead of 1).
    ``precision`` (one of :data:`PRECISIONS`): the network runs under ``torch.autocast`` for the mixed ones.

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`, or ``sw_batch_size`` < 1.
    """

    spatial_dims: int = 2
    roi_size: tuple[int, ...] = ()
    overlap: float = 0.5
    sw_batch_size: int = 2
    mirror: bool = False
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not an inference precision; use one of "
                              f"{', '.join(PRECISIONS)}")
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ConfigError(f"--sw-batch-size {self.sw_batch_size!r} (windows per forward of the sliding-window "
                              "inference) must be a whole number >= 1; use e.g. --sw-batch-size 2")

    @classmethod
    def from_config(cls, config, *, mirror: bool | None = None, sw_batch_size: int | None = None,
                    precision: str = "32-true", plan: Plan | None = None) -> InferenceSettings:
        """The settings of a run's configuration; ``mirror`` / ``sw_batch_size`` replace the run's ``train.mirror``
        / ``train.sw_batch_size`` unless None. The window size (``roi_size``) is the ``plan``'s input size, else
        ``data.input_size``."""
        tc = config.train
        size = plan.input_size if plan is not None else config.data.input_size
        return cls(config.model.spatial_dims, tuple(int(v) for v in size), tc.sw_overlap,
                   tc.sw_batch_size if sw_batch_size is None else sw_batch_size,
                   tc.mirror if mirror is None else bool(mirror), precision)


def forward_with_uncertainty(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits ``[B, K, *S]`` with the finest UAFS map appended as channel ``K`` when the model records one; the
    network runs under ``torch.autocast(dtype)`` unless ``dtype`` is None, the result is float32."""
    with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        logits = model(x)
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    unc = finest_uncertainty(model, x.shape[2:])
    return logits.float() if unc is None else torch.cat([logits.float(), unc], dim=1)


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (for models with UAFS) the uncertainty map of whole images or volumes, in float32.

    2D images go through the network at once, volumes window by window (see :class:`InferenceSettings`). With
    ``settings.mirror`` both outputs are averaged over the input and its flips along each spatial axis (3 passes
    for images, 4 for volumes); with a mixed ``settings.precision`` the network runs under ``torch.autocast`` on
    ``images.device``. ``model`` must be on ``images.device``.

    Shape:
        ``images`` ``[B, C, *S]`` -> logits ``[B, K, *S]`` and uncertainty ``[B, 1, *S]`` (or ``None``).

    Raises:
        ConfigError: ``settings.precision`` cannot run on ``images.device`` (see :func:`autocast_dtype`).
    """
    dtype = autocast_dtype(settings.precision, images.device)
    has_uafs = record_uncertainty(model, True) > 0
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype is None and weights != images.dtype and images.is_floating_point():  # e.g. a run trained in 64-true
        images = images.to(weights)

    def predictor(x):
        return forward_with_uncertainty(model, x, dtype)

    def whole(x):  # one forward when the input is the network's input size (2D: always), else windows
        if not settings.roi_size or tuple(x.shape[2:]) == tuple(settings.roi_size):
            return predictor(x)
        return sliding_window_inference(x, settings.roi_size, settings.sw_batch_size, predictor,
                                        overlap=settings.overlap, mode="gaussian")

    try:
        flips = [()] + ([(a,) for a in range(2, images.ndim)] if settings.mirror else [])
        total = None
        for axes in flips:
            out = whole(images.flip(axes) if axes else images)
            out = out.flip(axes) if axes else out
            total = out if total is None else total + out
        out = total / len(flips) if len(flips) > 1 else total
    finally:
        record_uncertainty(model, False)
    if has_uafs:
        return out[:, :-1], out[:, -1:].clamp(0, 1)
    return out, None


def record_uncertainty(model: nn.Module, on: bool = True) -> int:
    """Switch recording of the last uncertainty map on every UAFS block of ``model``; returns how many."""
    blocks = [m for m in model.modules() if isinstance(m, UncertaintySelect)]
    for block in blocks:
        block.record = on
        if not on:
            block.last_uncertainty = None
    return len(blocks)


def finest_uncertainty(model: nn.Module, size: Sequence[int]) -> torch.Tensor | None:
    """The recorded UAFS map of the finest resolution, resized to ``size``.

    Shape:
        returns ``[B, 1, *size]`` in [0, 1], or ``None`` when the model has no recording UAFS block.
    """
    maps = uncertainty_maps(model)
    if not maps:
        return None
    finest = max(maps.values(), key=lambda m: m[0, 0].numel())
    mode = LINEAR_MODES[finest.ndim - 2]
    return F.interpolate(finest.float(), size=tuple(size), mode=mode, align_corners=False).clamp(0, 1)
