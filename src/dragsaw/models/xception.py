"""Aligned Xception backbone at output stride 16 (DeepLabV3+, METHOD.md section 3.1), 2D and 3D.

Layout (channels at ``width=1``, stride relative to the input)::

    conv1      3x3 s2, 32, BN, ReLU                      stride 2
    conv2      3x3, 64, BN, ReLU                         stride 2
    block1     -> 128, strided; ReLU'd output = low-level feature   stride 4
    block2     -> 256                                    stride 8
    block3     -> 728                                    stride 16
    middle.0..middle.{m-1}   728, three separable convs each (m = 16)
    exit_block 728 -> 1024 (the reference's block20)
    conv3, conv4, conv5      separable 1024 -> 1536 -> 1536 -> 2048, dilation 2, each + BN + ReLU

A separable convolution is depthwise 3x3 -> BN -> pointwise 1x1; a block is a sequence of ``[ReLU] -> separable
-> BN`` units plus a residual (a strided 1x1 conv + BN when the shape changes). Blocks that start with a ReLU apply
it to their input before both branches: the common PyTorch ports use an in-place ReLU there, which also rectifies
the residual, and this module makes that behaviour explicit.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .._checks import check_int
from .layers import ConvNormAct, conv, make_norm, scaled

__all__ = ["AlignedXception", "SeparableConv", "SepConvUnit", "XceptionBlock"]


class SeparableConv(nn.Module):
    """Depthwise 3x3 (stride, dilation) -> BN -> pointwise 1x1 (``.depthwise``, ``.norm``, ``.pointwise``).

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *ceil(S / stride)]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.depthwise = conv(spatial_dims, in_channels, in_channels, 3, stride, dilation=dilation, groups=in_channels)
        self.norm = make_norm("batch", spatial_dims, in_channels)
        self.pointwise = conv(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply depthwise, norm and pointwise convolutions."""
        return self.pointwise(self.norm(self.depthwise(x)))


class SepConvUnit(nn.Sequential):
    """``[pre_act ReLU] -> SeparableConv (.conv) -> BN (.norm) -> [act ReLU]``.

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *ceil(S / stride)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        pre_act: bool = True,
        post_act: bool = False,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pre_act:
            layers["pre_act"] = nn.ReLU()
        layers["conv"] = SeparableConv(spatial_dims, in_channels, out_channels, stride, dilation)
        layers["norm"] = make_norm("batch", spatial_dims, out_channels)
        if post_act:
            layers["act"] = nn.ReLU()
        super().__init__(layers)


class XceptionBlock(nn.Module):
    """Residual block of separable-conv units (``.units``), a residual (``.skip``) and optional ReLUs.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        reps: separable units before the optional strided/last unit.
        stride: 1 or 2; 2 appends a strided unit and makes the residual a strided 1x1 conv + BN.
        start_with_relu: rectify the input (for both branches) first.
        grow_first: change the channels in the first unit (else in the last of the ``reps`` units).
        is_last: append an extra unit at stride 1 (the exit block).
        end_with_relu: rectify the sum (block1, whose output is the low-level feature).

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *ceil(S / stride)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        *,
        start_with_relu: bool = True,
        grow_first: bool = True,
        is_last: bool = False,
        end_with_relu: bool = False,
    ) -> None:
        super().__init__()
        self.pre_act = nn.ReLU() if start_with_relu else nn.Identity()
        if out_channels != in_channels or stride != 1:
            self.skip: nn.Module = ConvNormAct(spatial_dims, in_channels, out_channels, 1, stride, act=None)
        else:
            self.skip = nn.Identity()
        chans = [in_channels] + [out_channels if grow_first else in_channels] * (reps - 1) + [out_channels]
        specs = [(chans[i], chans[i + 1], 1) for i in range(reps)]
        if stride != 1 or is_last:
            specs.append((out_channels, out_channels, stride))
        self.units = nn.Sequential(
            *(SepConvUnit(spatial_dims, c_in, c_out, s, pre_act=i > 0) for i, (c_in, c_out, s) in enumerate(specs))
        )
        self.post_act = nn.ReLU() if end_with_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``post_act(units(a) + skip(a))`` with ``a = pre_act(x)``."""
        x = self.pre_act(x)
        return self.post_act(self.units(x) + self.skip(x))


class AlignedXception(nn.Module):
    """Aligned Xception at output stride 16; ``forward`` returns ``(low_level, high_level)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        width: channel multiplier (1.0 = the paper's network).
        middle_blocks: number of middle-flow blocks (16 in the paper).

    Shape:
        ``[B, in_channels, *S] -> ([B, 128w, *ceil(S/4)], [B, 2048w, *ceil(S/16)])``.
    """

    external_layout = "cadene"
    external_ignore = ("fc", "last_linear")
    low_level_stride = 4
    output_stride = 16

    def __init__(self, spatial_dims: int, in_channels: int, width: float = 1.0, middle_blocks: int = 16) -> None:
        super().__init__()
        self.middle_blocks = check_int("middle_blocks", middle_blocks, minimum=0)
        c = {n: scaled(n, width) for n in (32, 64, 128, 256, 728, 1024, 1536, 2048)}
        sd = spatial_dims
        self.conv1 = ConvNormAct(sd, in_channels, c[32], 3, 2)
        self.conv2 = ConvNormAct(sd, c[32], c[64], 3)
        self.block1 = XceptionBlock(sd, c[64], c[128], 2, 2, start_with_relu=False, end_with_relu=True)
        self.block2 = XceptionBlock(sd, c[128], c[256], 2, 2, start_with_relu=False)
        self.block3 = XceptionBlock(sd, c[256], c[728], 2, 2)
        self.middle = nn.Sequential(*(XceptionBlock(sd, c[728], c[728], 3) for _ in range(middle_blocks)))
        self.exit_block = XceptionBlock(sd, c[728], c[1024], 2, 1, grow_first=False, is_last=True)
        self.conv3 = SepConvUnit(sd, c[1024], c[1536], dilation=2, pre_act=False, post_act=True)
        self.conv4 = SepConvUnit(sd, c[1536], c[1536], dilation=2, pre_act=False, post_act=True)
        self.conv5 = SepConvUnit(sd, c[1536], c[2048], dilation=2, pre_act=False, post_act=True)
        self.channels = c
        self.low_level_channels = c[128]
        self.out_channels = c[2048]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the low-level (stride 4) and the high-level (stride 16) features."""
        low = self.block1(self.conv2(self.conv1(x)))
        x = self.exit_block(self.middle(self.block3(self.block2(low))))
        return low, self.conv5(self.conv4(self.conv3(x)))

    def tap_points(self) -> dict[str, tuple[int, int]]:
        """``{name: (channels, stride)}`` of the named stages used by the host descriptions."""
        c = self.channels
        return {
            "conv1": (c[32], 2),
            "conv2": (c[64], 2),
            "block1": (c[128], 4),
            "block2": (c[256], 8),
            "conv3": (c[1536], 16),
            "conv4": (c[1536], 16),
            "conv5": (c[2048], 16),
        }

    def external_key_pairs(self) -> list[tuple[str, str]]:
        """``(Cadene key prefix, own key prefix)`` pairs for the ImageNet Xception (8 middle blocks, block1..12).

        The reference remapping: blocks 1-3 and middle blocks 4-11 map by number, Cadene block11 also feeds every
        further middle block, block12 feeds the exit block, conv3/bn3 feed conv3, bn3 also feeds conv4's norm, and
        conv4/bn4 feed conv5. Not covered (kept at init): the norms inside the separable convolutions, the extra
        strided/last unit of blocks 1-3 and the exit block, and conv4's separable convolution.

        The pairs follow the meaning of the keys, not their names. The reference loader matched names, so two
        parts that are laid out differently stayed at their initialisation there: block2's separable convs and
        norms (its ``rep`` has no leading ReLU in the aligned network, which shifts the indices) and the exit
        block's skip (the aligned network's block12 is a middle block without one). Here both are loaded.
        """
        pairs = [("conv1", "conv1.conv"), ("bn1", "conv1.norm"), ("conv2", "conv2.conv"), ("bn2", "conv2.norm")]
        blocks = [("block1", 1), ("block2", 2), ("block3", 3)]
        blocks += [(f"middle.{k}", min(4 + k, 11)) for k in range(self.middle_blocks)]
        blocks.append(("exit_block", 12))
        for own, src in blocks:
            module = self.get_submodule(own)
            if not isinstance(module.skip, nn.Identity):
                pairs += [(f"block{src}.skip", f"{own}.skip.conv"), (f"block{src}.skipbn", f"{own}.skip.norm")]
            # Cadene's rep is [ReLU, sep, BN] * n (no leading ReLU in block1): sep i sits at 3i+1 (3i in block1).
            offset = 0 if src == 1 else 1
            n_sep = 3 if 4 <= src <= 11 else 2
            for i in range(n_sep):
                j = 3 * i + offset
                pairs += [
                    (f"block{src}.rep.{j}.conv1", f"{own}.units.{i}.conv.depthwise"),
                    (f"block{src}.rep.{j}.pointwise", f"{own}.units.{i}.conv.pointwise"),
                    (f"block{src}.rep.{j + 1}", f"{own}.units.{i}.norm"),
                ]
        pairs += [
            ("conv3.conv1", "conv3.conv.depthwise"),
            ("conv3.pointwise", "conv3.conv.pointwise"),
            ("bn3", "conv3.norm"),
            ("bn3", "conv4.norm"),
            ("conv4.conv1", "conv5.conv.depthwise"),
            ("conv4.pointwise", "conv5.conv.pointwise"),
            ("bn4", "conv5.norm"),
        ]
        return pairs
