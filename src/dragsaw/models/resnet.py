"""ResNet-18/34/50 backbones with a dilated last stage (output stride 16), 2D and 3D, torch only.

Named stages (stride relative to the input): ``stem`` (7x7 s2 conv + BN + ReLU, stride 2), ``pool`` (3x3 s2
max pool), ``layer1`` (stride 4, the low-level feature), ``layer2`` (8), ``layer3`` (16), ``layer4`` (16, dilation
2). Inside the layers, key names follow torchvision (``layerN.i.conv1``, ``bn1``, ..., ``downsample.0/1``), so
torchvision ImageNet state dicts load with only the stem renamed.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice
from .layers import ConvNormAct, conv, make_norm, max_pool, scaled

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "RESNET_DEPTHS"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34).

    Shape:
        ``[B, in_channels, *S] -> [B, planes, *ceil(S / stride)]``.
    """

    expansion = 1

    def __init__(self, spatial_dims: int, in_channels: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, planes, 3, stride, dilation=dilation)
        self.bn1 = make_norm("batch", spatial_dims, planes)
        self.conv2 = conv(spatial_dims, planes, planes, 3, dilation=dilation)
        self.bn2 = make_norm("batch", spatial_dims, planes)
        self.relu = nn.ReLU()
        self.downsample = _downsample(spatial_dims, in_channels, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, dilated) -> 1x1 (x4 channels) with a residual (ResNet-50).

    Shape:
        ``[B, in_channels, *S] -> [B, 4 * planes, *ceil(S / stride)]``.
    """

    expansion = 4

    def __init__(self, spatial_dims: int, in_channels: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv(spatial_dims, in_channels, planes, 1)
        self.bn1 = make_norm("batch", spatial_dims, planes)
        self.conv2 = conv(spatial_dims, planes, planes, 3, stride, dilation=dilation)
        self.bn2 = make_norm("batch", spatial_dims, planes)
        self.conv3 = conv(spatial_dims, planes, out_channels, 1)
        self.bn3 = make_norm("batch", spatial_dims, out_channels)
        self.relu = nn.ReLU()
        self.downsample = _downsample(spatial_dims, in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck residual unit."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


def _downsample(spatial_dims: int, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        conv(spatial_dims, in_channels, out_channels, 1, stride), make_norm("batch", spatial_dims, out_channels)
    )


RESNET_DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ResNet backbone at output stride 16; ``forward`` returns ``(layer1 output, layer4 output)``.

    ``layer4`` keeps stride 1; its first block has dilation 1 and the others dilation 2 (torchvision's
    ``replace_stride_with_dilation`` rule).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        depth: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        width: channel multiplier (1.0 = the standard network).

    Shape:
        ``[B, in_channels, *S] -> ([B, 64w*e, *ceil(S/4)], [B, 512w*e, *ceil(S/16)])`` with ``e`` = 1 (18/34) or 4.
    """

    external_layout = "torchvision"
    external_ignore = ("fc",)
    low_level_stride = 4
    output_stride = 16

    def __init__(self, spatial_dims: int, in_channels: int, depth: str = "resnet50", width: float = 1.0) -> None:
        super().__init__()
        block, counts = RESNET_DEPTHS[check_choice("backbone", depth, tuple(RESNET_DEPTHS))]
        stem = scaled(64, width)
        self.stem = ConvNormAct(spatial_dims, in_channels, stem, 7, 2)
        self.pool = max_pool(spatial_dims, 3, 2, padding=1)
        channels = stem
        layers = []
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts)):
            planes = scaled(planes, width)
            stride = 2 if index in (1, 2) else 1
            dilations = [1] + [2] * (count - 1) if index == 3 else [1] * count
            blocks = []
            for i in range(count):
                blocks.append(block(spatial_dims, channels, planes, stride if i == 0 else 1, dilations[i]))
                channels = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.stem_channels = stem
        self.low_level_channels = scaled(64, width) * block.expansion
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the low-level (stride 4) and the high-level (stride 16) features."""
        low = self.layer1(self.pool(self.stem(x)))
        return low, self.layer4(self.layer3(self.layer2(low)))

    def tap_points(self) -> dict[str, tuple[int, int]]:
        """``{name: (channels, stride)}`` of the named stages used by the host descriptions."""
        return {
            "stem": (self.stem_channels, 2),
            "layer1": (self.low_level_channels, 4),
            "layer4": (self.out_channels, 16),
        }

    def external_key_pairs(self) -> list[tuple[str, str]]:
        """``(torchvision prefix, own prefix)`` pairs: the stem is renamed, every layer key is the same."""
        leaves = [name for name, m in self.named_modules() if name.startswith("layer") and not list(m.children())]
        return [("conv1", "stem.conv"), ("bn1", "stem.norm")] + [(name, name) for name in leaves]
