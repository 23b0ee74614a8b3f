"""A standard U-Net, 2D and 3D, for inputs of any size.

Named modules for ``channels = (c0, ..., cn)`` (``n`` downsamplings)::

    encoder.0            conv-norm-ReLU x2 -> c0                      stride 1
    encoder.i (i >= 1)   max pool 2 (ceil mode) -> conv-norm-ReLU x2  stride 2**i   (encoder.n is the bottleneck)
    up.j                 transposed conv 2x2, c(n-j) -> c(n-j-1), cropped to the skip's size
    decoder.j            [skip, upsampled] -> conv-norm-ReLU x2 -> c(n-j-1)   stride 2**(n-j-1)
    head                 1x1 conv -> num_classes

Each pooling maps ``S`` to ``ceil(S / 2)``, so stage ``i`` has ``ceil(S / 2**i)`` locations per axis, its location
``k`` covering input ``[k * 2**i, (k + 1) * 2**i)``; the decoder crops the upsampled map to the skip, so the logits
have exactly the input's size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_choice, check_int_tuple
from .base import HostNetwork, TapSpec
from .layers import NORMS, ConvNormAct, conv, conv_transpose, crop_to, init_he, max_pool
from .registry import register_model

__all__ = ["UNet"]


def _double_conv(spatial_dims: int, in_channels: int, out_channels: int, norm: str, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if pool:
        layers["pool"] = max_pool(spatial_dims, 2, 2, ceil_mode=True)
    layers["conv1"] = ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm)
    layers["conv2"] = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm)
    return nn.Sequential(layers)


@register_model("unet")
class UNet(HostNetwork):
    """U-Net with ``len(channels) - 1`` downsamplings (max pool) and transposed-conv upsampling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits).
        channels: channels per stage, shallowest first; at least 3 stages.
        norm: ``"batch"`` or ``"instance"``.

    Shape:
        ``[B, in_channels, *S] -> [B, num_classes, *S]`` for any ``S >= 1``.

    Raises:
        ConfigError: for fewer than 3 stages, non-positive channels or an unknown norm.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        norm: str = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        self.channels = check_int_tuple("channels", channels, min_length=3)
        self.norm = check_choice("norm", norm, NORMS)
        sd, ch = self.spatial_dims, self.channels
        self.encoder = nn.ModuleList(
            _double_conv(sd, in_channels if i == 0 else ch[i - 1], ch[i], norm, pool=i > 0) for i in range(len(ch))
        )
        depth = len(ch) - 1
        self.up = nn.ModuleList(conv_transpose(sd, ch[depth - j], ch[depth - j - 1], 2) for j in range(depth))
        self.decoder = nn.ModuleList(
            _double_conv(sd, 2 * ch[depth - j - 1], ch[depth - j - 1], norm, pool=False) for j in range(depth)
        )
        self.head = conv(sd, ch[0], num_classes, 1, bias=True)
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input's spatial size."""
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.up, self.decoder):
            skip = skips.pop()
            x = stage(torch.cat([skip, crop_to(up(x), skip.shape[2:])], dim=1))
        return self.head(x)

    def _stride(self, level: int) -> tuple[int, ...]:
        return (2**level,) * self.spatial_dims

    def pdcr_taps(self) -> list[TapSpec]:
        """Encoder stages 1 and 2 (strides 2 and 4) and the last two decoder stages (strides 2 and 1)."""
        depth = len(self.channels) - 1
        taps = [TapSpec(f"encoder.{i}", self.channels[i], self._stride(i), "encoder") for i in (1, 2)]
        for j in (depth - 2, depth - 1):
            level = depth - j - 1
            taps.append(TapSpec(f"decoder.{j}", self.channels[level], self._stride(level), "decoder"))
        return taps

    def pdcr_cross(self) -> list[tuple[str, str]]:
        """Cross-layer PDCR between ``encoder.1`` and ``encoder.2``."""
        return [("encoder.1", "encoder.2")]

    def uafs_points(self) -> list[tuple[str, int]]:
        """Every decoder stage below full resolution, deepest first.

        The full-resolution stage is left out: there a UAFS head (a 3x3 conv at full size) costs about as much as
        the stage itself (+36% per training step for the CPU U-Net at 256x256), and the 2D reference places UAFS
        no finer than stride 2 in its decoder. Name ``decoder.<depth-1>`` in ``uafs.points`` to add it.
        """
        depth = len(self.channels) - 1
        return [(f"decoder.{j}", self.channels[depth - j - 1]) for j in range(depth - 1)]
