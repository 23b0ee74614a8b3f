"""DeepLabV3+ (output stride 16) with an aligned Xception or a ResNet backbone, 2D and 3D (METHOD.md 3.1).

Named modules (``w`` = width multiplier; channels at ``w = 1`` with the Xception backbone)::

    backbone.*            see AlignedXception / ResNet
    aspp.branches.0       1x1, 256                          stride 16
    aspp.branches.1..3    3x3 atrous (rates 6, 12, 18), 256
    aspp.pool             image pooling: global average -> 1x1 256 -> BN -> ReLU -> broadcast
    aspp.concat           1280
    aspp.project          1x1 256 -> BN -> ReLU -> Dropout(0.5)
    decoder.low_level     low-level 1x1 -> 48 -> BN -> ReLU   stride 4
    decoder.concat        [ASPP upsampled to stride 4, low-level] = 304
    decoder.conv1         3x3 256 -> BN -> ReLU   (decoder.drop1: Dropout 0.5)
    decoder.conv2         3x3 256 -> BN -> ReLU   (decoder.drop2: Dropout 0.1)
    head                  1x1 -> num_classes, then (bi/tri)linear resize to the input size
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError, DataError
from .._checks import check_choice, check_float, check_int, check_int_tuple
from .base import HostNetwork, TapSpec
from .layers import Concat, ConvNormAct, conv, init_he, resize, scaled
from .registry import register_model
from .resnet import RESNET_DEPTHS, ResNet
from .weights import load_backbone_weights
from .xception import AlignedXception

__all__ = ["ASPP", "DeepLabDecoder", "DeepLabV3Plus", "ImagePooling", "BACKBONES"]

BACKBONES = ("xception",) + tuple(RESNET_DEPTHS)


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> BN -> ReLU, broadcast back to the input's spatial size.

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *S]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = ConvNormAct(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, project and broadcast (bilinear upsampling of a single value is a broadcast)."""
        pooled = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        return self.project(pooled).expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, atrous 3x3 branches, image pooling, concat, 1x1 projection.

    Args:
        spatial_dims: 2 or 3.
        in_channels: backbone output channels.
        out_channels: channels of every branch and of the output (256 in the paper).
        rates: dilation rates of the atrous branches.
        dropout: dropout after the projection.

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *S]``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, rates: Sequence[int], dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches = [ConvNormAct(spatial_dims, in_channels, out_channels, 1)]
        branches += [ConvNormAct(spatial_dims, in_channels, out_channels, 3, dilation=r) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pool = ImagePooling(spatial_dims, in_channels, out_channels)
        self.concat = Concat()
        self.project = nn.Sequential(
            OrderedDict(
                block=ConvNormAct(spatial_dims, out_channels * (len(rates) + 2), out_channels, 1),
                dropout=nn.Dropout(dropout),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches on ``x`` and fuse them."""
        return self.project(self.concat([branch(x) for branch in self.branches] + [self.pool(x)]))


class DeepLabDecoder(nn.Module):
    """DeepLabV3+ decoder: reduce the low-level feature, concat with the upsampled ASPP output, two 3x3 convs.

    Shape:
        ``low [B, C_low, *S4]``, ``high [B, C_high, *S16]`` -> ``[B, mid_channels, *S4]``.
    """

    def __init__(
        self, spatial_dims: int, low_channels: int, high_channels: int, reduced: int = 48, mid_channels: int = 256
    ) -> None:
        super().__init__()
        self.low_level = ConvNormAct(spatial_dims, low_channels, reduced, 1)
        self.concat = Concat()
        self.conv1 = ConvNormAct(spatial_dims, high_channels + reduced, mid_channels, 3)
        self.drop1 = nn.Dropout(0.5)
        self.conv2 = ConvNormAct(spatial_dims, mid_channels, mid_channels, 3)
        self.drop2 = nn.Dropout(0.1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Fuse the low-level (stride 4) and the ASPP (stride 16) features."""
        low = self.low_level(low)
        high = resize(high, low.shape[2:], align_corners=True)
        x = self.drop1(self.conv1(self.concat([high, low])))
        return self.drop2(self.conv2(x))


@register_model("deeplabv3plus")
class DeepLabV3Plus(HostNetwork):
    """DeepLabV3+ at output stride 16 (the paper's 2D host), for 2D or 3D inputs of any size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits).
        backbone: ``"xception"`` (aligned Xception, the paper's), ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        width: channel multiplier applied to every layer (backbone, ASPP, decoder); 1.0 = the paper's network.
        middle_blocks: Xception middle-flow blocks (``None`` = 16); Xception only.
        atrous_rates: dilation rates of the ASPP's atrous branches.
        weights: path of a local backbone state dict to load (never downloaded); ``None`` keeps the He init.
        weights_layout: key layout of ``weights``: ``"auto"``, ``"dragsaw"`` (``model.backbone.state_dict()``),
            ``"cadene"`` (ImageNet Xception of ``pretrainedmodels``, remapped as in METHOD 3.1) or
            ``"torchvision"`` (ImageNet ResNet); see :func:`dragsaw.models.weights.load_backbone_weights`.

    Shape:
        ``[B, in_channels, *S] -> [B, num_classes, *S]`` (logits, resized to the input with align_corners=True).

    Raises:
        ConfigError: for invalid options or weights that cannot be loaded.

    Note:
        In training mode the image-pooling branch batch-normalises one value per image, so a batch needs at
        least 2 images (the forward raises a DataError otherwise); eval mode takes any batch.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 2,
        *,
        backbone: str = "xception",
        width: float = 1.0,
        middle_blocks: int | None = None,
        atrous_rates: Sequence[int] = (6, 12, 18),
        weights: str | Path | None = None,
        weights_layout: str = "auto",
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        self.backbone_name = check_choice("backbone", backbone, BACKBONES)
        self.width = check_float("width", width, low=0.0, low_open=True)
        rates = check_int_tuple("atrous_rates", atrous_rates, min_length=1)
        sd = self.spatial_dims
        if backbone == "xception":
            blocks = 16 if middle_blocks is None else check_int("middle_blocks", middle_blocks, minimum=0)
            self.backbone: nn.Module = AlignedXception(sd, in_channels, self.width, blocks)
        else:
            if middle_blocks is not None:
                raise ConfigError(
                    f"middle_blocks={middle_blocks!r} applies to backbone='xception' only, not {backbone!r}; "
                    "drop the option."
                )
            self.backbone = ResNet(sd, in_channels, backbone, self.width)
        aspp, reduced = scaled(256, self.width), scaled(48, self.width)
        self.aspp = ASPP(sd, self.backbone.out_channels, aspp, rates)
        self.decoder = DeepLabDecoder(sd, self.backbone.low_level_channels, aspp, reduced, aspp)
        # the description is fixed here, so it stays valid after blocks are inserted into the network
        self._decoder_channels = {
            "decoder.low_level": reduced,
            "decoder.conv1": aspp,
            "decoder.concat": aspp + reduced,
        }
        self.head = conv(sd, aspp, num_classes, 1, bias=True)
        init_he(self)
        if weights is not None:
            load_backbone_weights(self.backbone, weights, weights_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input's spatial size."""
        self.check_input(x)
        if x.shape[0] < 2 and any(isinstance(m, _BatchNorm) and m.training for m in self.aspp.pool.modules()):
            raise DataError(
                f"DeepLabV3Plus in training mode needs a batch of at least 2 (got shape {tuple(x.shape)}): the "
                "image-pooling branch batch-normalises one value per image. Use a larger batch or model.eval()."
            )
        low, high = self.backbone(x)
        features = self.decoder(low, self.aspp(high))
        return resize(self.head(features), x.shape[2:], align_corners=True)

    def _stride(self, s: int) -> tuple[int, ...]:
        return (s,) * self.spatial_dims

    def pdcr_taps(self) -> list[TapSpec]:
        """Encoder: Xception ``conv2`` (stride 2) and ``block1`` (stride 4), or ResNet ``stem`` and ``layer1``;
        decoder: the low-level 1x1 branch and the first 3x3 decoder conv (stride 4, before its dropout)."""
        points = self.backbone.tap_points()
        names = ("conv2", "block1") if self.backbone_name == "xception" else ("stem", "layer1")
        taps = [TapSpec(f"backbone.{n}", points[n][0], self._stride(points[n][1]), "encoder") for n in names]
        for name in ("decoder.low_level", "decoder.conv1"):
            taps.append(TapSpec(name, self._decoder_channels[name], self._stride(4), "decoder"))
        return taps

    def pdcr_cross(self) -> list[tuple[str, str]]:
        """Cross-layer PDCR between the two encoder taps."""
        first, second = (t.name for t in self.pdcr_taps() if t.role == "encoder")
        return [(first, second)]

    def uafs_points(self) -> list[tuple[str, int]]:
        """Xception: ``conv1``, ``conv2``, the exit-flow ``conv3``/``conv4``/``conv5``; ResNet: ``stem`` and
        ``layer4``; both: ``decoder.low_level`` and ``decoder.concat`` (the reference's released default)."""
        points = self.backbone.tap_points()
        xception = ("conv1", "conv2", "conv3", "conv4", "conv5")
        names = xception if self.backbone_name == "xception" else ("stem", "layer4")
        out = [(f"backbone.{n}", points[n][0]) for n in names]
        out += [(name, self._decoder_channels[name]) for name in ("decoder.low_level", "decoder.concat")]
        return out
