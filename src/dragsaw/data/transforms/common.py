"""Pieces shared by the image and volume pipelines: a ``Compose`` that lets dragsaw's errors through, the label
channel axis on and off, plain tensors out, and the checks of sizes and spacings (any number of spatial axes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from dragsaw._checks import int_sequence
from dragsaw.errors import ConfigError, DataError, DragsawError

__all__ = ["KEYS", "Pipeline", "LabelChannel", "ToPlain", "as_float_tuple", "check_size"]

KEYS = ("image", "label")
"""The dictionary keys every pipeline transforms."""


class Pipeline(Compose):
    """MONAI ``Compose`` that lets dragsaw's own errors through (MONAI wraps every error in a RuntimeError)."""

    def __init__(self, transforms: Sequence) -> None:
        super().__init__(list(transforms), log_stats=False)

    def __call__(self, data, *args, **kwargs):
        try:
            return super().__call__(data, *args, **kwargs)
        except RuntimeError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, DragsawError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


class LabelChannel:
    """Add (``add=True``: ``[*S]`` -> float ``[1, *S]``) or remove (``[1, *S]`` -> int64 ``[*S]``, rounded) the
    channel axis of ``"label"`` so that MONAI's spatial transforms see it; a missing label is left alone.

    Args:
        add: add or remove the axis.
        spatial_dims: with ``add=True``, the label must have this many axes (else DataError naming the shape).
    """

    def __init__(self, add: bool, spatial_dims: int) -> None:
        self.add, self.spatial_dims = bool(add), int(spatial_dims)

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        if "label" not in d:
            return d
        label = torch.as_tensor(d["label"])
        if self.add:
            if label.ndim != self.spatial_dims:
                raise DataError(f"'label' must be {self.spatial_dims}-D class indices [*S], got shape "
                                f"{tuple(label.shape)}")
            d["label"] = label[None].to(torch.float32)
        else:
            d["label"] = label.as_subclass(torch.Tensor)[0].round().to(torch.int64).contiguous()
        return d


class ToPlain:
    """Plain torch tensors out (MONAI may return MetaTensors): ``"image"`` float32, contiguous."""

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        d["image"] = torch.as_tensor(d["image"]).as_subclass(torch.Tensor).to(torch.float32).contiguous()
        return d


def check_size(value: Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """``value`` as ``spatial_dims`` positive ints, else ConfigError naming ``name``."""
    size = int_sequence(value, spatial_dims)
    if size is None:
        raise ConfigError(f"{name} must be {spatial_dims} positive integers (one per spatial axis), got {value!r}")
    return size


def as_float_tuple(name: str, value: Sequence[float], n: int = 3) -> tuple[float, ...]:
    """``value`` as ``n`` positive finite floats, else ConfigError naming ``name``."""
    try:
        out = tuple(float(v) for v in value)
        ok = len(out) == n and all(np.isfinite(v) and v > 0 for v in out) and not isinstance(value, (str, bytes))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be {n} positive numbers (one per spatial axis), got {value!r}")
    return out
