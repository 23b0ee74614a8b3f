"""Dimension-generic building blocks shared by the host networks.

Every layer class is looked up by ``spatial_dims`` in one small table, so 2D and 3D networks share one code path.
Activations are never in place: a forward hook on a named block keeps the exact tensor the block returned.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import SUPPORTED_DIMS, check_choice, check_spatial_dims
from ..uafs import PointwiseConv

__all__ = [
    "ACTS",
    "NORMS",
    "Concat",
    "ConvNormAct",
    "conv",
    "conv_transpose",
    "crop_to",
    "init_he",
    "make_act",
    "make_norm",
    "max_pool",
    "resize",
    "scaled",
]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_INTERP = {2: "bilinear", 3: "trilinear"}
NORMS = tuple(_NORM)
ACTS = ("relu", "leaky_relu")


def _tuple(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return (value,) * spatial_dims if isinstance(value, int) else tuple(value)


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    *,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nn.Module:
    """Convolution with "same" padding ``dilation * (k - 1) // 2`` per axis (odd kernels).

    With this padding a stride-``s`` convolution maps ``S`` locations to ``ceil(S / s)`` (for ``k >= s``), and output
    ``i`` is centred on input ``i * s``.
    """
    kernel = _tuple(kernel_size, spatial_dims)
    padding = tuple(dilation * (k - 1) // 2 for k in kernel)
    return _CONV[check_spatial_dims(spatial_dims, SUPPORTED_DIMS)](
        in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias
    )


def conv_transpose(
    spatial_dims: int, in_channels: int, out_channels: int, stride: int | Sequence[int], *, bias: bool = False
) -> nn.Module:
    """Transposed convolution with kernel = stride: maps ``S`` locations to exactly ``S * stride``."""
    return _CONV_T[check_spatial_dims(spatial_dims, SUPPORTED_DIMS)](
        in_channels, out_channels, kernel_size=stride, stride=stride, bias=bias
    )


def max_pool(spatial_dims: int, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> nn.Module:
    """Max pooling of the right dimensionality."""
    pool = _MAX_POOL[check_spatial_dims(spatial_dims, SUPPORTED_DIMS)]
    return pool(kernel_size, stride, padding=padding, ceil_mode=ceil_mode)


def make_norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """``"batch"`` or ``"instance"`` normalisation (instance norm with learnable affine, as in nnU-Net)."""
    cls = _NORM[check_choice("norm", kind, NORMS)][check_spatial_dims(spatial_dims, SUPPORTED_DIMS)]
    return cls(channels, affine=True) if kind == "instance" else cls(channels)


def make_act(kind: str, negative_slope: float = 0.01) -> nn.Module:
    """``"relu"`` or ``"leaky_relu"`` (never in place)."""
    if check_choice("act", kind, ACTS) == "relu":
        return nn.ReLU()
    return nn.LeakyReLU(negative_slope)


class ConvNormAct(nn.Sequential):
    """``conv -> norm -> act`` as a named sequence (``.conv``, ``.norm``, ``.act``); ``act=None`` omits ``.act``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size (int or per axis); "same" padding.
        stride: stride (int or per axis).
        dilation: dilation of the convolution.
        norm: ``"batch"`` or ``"instance"``.
        act: ``"relu"``, ``"leaky_relu"`` or ``None``.
        negative_slope: slope of the leaky ReLU.

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *ceil(S / stride)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        *,
        dilation: int = 1,
        norm: str = "batch",
        act: str | None = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = conv(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation=dilation)
        layers["norm"] = make_norm(norm, spatial_dims, out_channels)
        if act is not None:
            layers["act"] = make_act(act, negative_slope)
        super().__init__(layers)


class Concat(nn.Module):
    """Channel concatenation as a named module, so that the concatenated feature can be tapped or wrapped.

    It takes one argument (a list or tuple of tensors), so ``nn.Sequential(Concat(), block)`` works.

    Shape:
        ``[[B, C_1, *S], ..., [B, C_n, *S]] -> [B, C_1 + ... + C_n, *S]``.
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate ``tensors`` along ``self.dim``."""
        return torch.cat(list(tensors), dim=self.dim)


def resize(x: torch.Tensor, size: Sequence[int], *, align_corners: bool = True) -> torch.Tensor:
    """(Bi/tri)linear resize of ``x`` to ``size``; a no-op when the size already matches.

    Shape:
        ``[B, C, *S] -> [B, C, *size]``.
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_INTERP[x.ndim - 2], align_corners=align_corners)


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Keep the first ``size[i]`` locations of each spatial axis (the trailing ones are dropped).

    Shape:
        ``[B, C, *S] -> [B, C, *size]`` with ``size <= S`` per axis.
    """
    return x[(slice(None), slice(None), *(slice(0, s) for s in size))]


def init_he(module: nn.Module, *, negative_slope: float = 0.0, mode: str = "fan_out") -> None:
    """He-normal init of every (transposed) convolution, zero biases, unit/zero norm affines.

    Args:
        module: the network (modified in place).
        negative_slope: slope of the leaky ReLU that follows the convolutions (0 for ReLU).
        mode: ``"fan_out"`` (torchvision ResNet / DeepLab style) or ``"fan_in"`` (nnU-Net style).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, PointwiseConv)):
            nn.init.kaiming_normal_(m.weight, a=negative_slope, mode=mode, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

