"""An nnU-Net-like dynamic U-Net (the paper's 3D host), equivalent to MONAI's ``DynUNet`` without residual blocks.

Blocks are conv -> instance norm -> leaky ReLU (0.01), twice; the first conv of a level carries its stride; the
decoder upsamples with a transposed conv (kernel = stride) and concatenates ``[upsampled, skip]``. Kernel sizes and
strides are given or derived from a patch size and voxel spacing by :func:`plan_dynunet`. Unlike MONAI's network,
inputs need not be divisible by the total stride (each strided conv maps ``S`` to ``ceil(S / s)`` and the decoder
crops), and every stage is a plainly named submodule with a single input::

    encoder.0 .. encoder.{L-2}   encoder stages (skips), encoder.i at the cumulative stride of strides[0..i]
    bottleneck                   the deepest stage (level L-1)
    up.j, decoder.j              j = 0 is the deepest decoder stage; decoder.j is at level L-2-j
    head                         1x1 conv -> num_classes (level 0)
    ds_heads.k                   deep-supervision 1x1 heads on the decoder output at level k+1

With the same kernels/strides/filters, the parameters map one-to-one onto MONAI's ``DynUNet(res_block=False)``
(``input_block`` = ``encoder.0``, ``downsamples.i`` = ``encoder.{i+1}``, ``upsamples.j.transp_conv`` = ``up.j``,
``upsamples.j.conv_block`` = ``decoder.j``, ``output_block`` = ``head``) and the outputs agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .._checks import check_choice, check_float, check_int, check_int_tuple
from .base import HostNetwork, TapSpec
from .layers import NORMS, conv, conv_transpose, crop_to, init_he, make_norm
from .registry import register_model

__all__ = ["DynUNet", "UNetBlock", "plan_dynunet"]


def plan_dynunet(
    patch_size: Sequence[int], spacing: Sequence[float] | None = None, *, min_size: int = 8
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Derive per-level kernel sizes and strides from a patch size and spacing (a simple nnU-Net-like rule).

    Level 0 has stride 1. An axis is halved for the next level while its size is at least ``min_size`` and its
    current spacing is at most twice the finest current spacing; halving doubles its spacing. A level's kernel is 3
    on axes within twice the finest spacing and 1 on the others. Planning stops when no axis can be halved.

    Args:
        patch_size: training patch size per axis.
        spacing: voxel spacing per axis (``None`` = isotropic).
        min_size: smallest axis size that is still halved.

    Returns:
        ``(kernel_sizes, strides)``: one tuple per level, ``strides[0]`` all ones.

    Raises:
        ConfigError: for invalid sizes or spacings.
    """
    sizes = list(check_int_tuple("patch_size", patch_size))
    if spacing is None:
        current = [1.0] * len(sizes)
    else:
        if isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence) or len(spacing) != len(sizes):
            raise ConfigError(f"spacing={spacing!r} must give one value per axis of patch_size={tuple(sizes)}.")
        current = [check_float("spacing", s, low=0.0, low_open=True) for s in spacing]
    min_size = check_int("min_size", min_size, minimum=2)
    kernels: list[tuple[int, ...]] = []
    strides: list[tuple[int, ...]] = [(1,) * len(sizes)]
    while True:
        finest = min(current)
        fine = [s <= 2 * finest for s in current]
        kernels.append(tuple(3 if f else 1 for f in fine))
        step = tuple(2 if f and n >= min_size else 1 for f, n in zip(fine, sizes))
        if max(step) == 1:
            return kernels, strides
        strides.append(step)
        sizes = [math.ceil(n / s) for n, s in zip(sizes, step)]
        current = [c * s for c, s in zip(current, step)]


def _plain(levels: object) -> object:
    """Per-level values with tuples turned into lists (JSON); anything else unchanged (checked by the constructor)."""
    if isinstance(levels, (list, tuple)):
        return [list(v) if isinstance(v, (list, tuple)) else v for v in levels]
    return levels


class UNetBlock(nn.Module):
    """conv(k, stride) -> norm -> leaky ReLU -> conv(k) -> norm -> leaky ReLU (``.conv1 .norm1 .conv2 .norm2 .act``).

    Shape:
        ``[B, in_channels, *S] -> [B, out_channels, *ceil(S / stride)]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        norm: str = "instance",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, out_channels, kernel_size, stride)
        self.conv2 = conv(spatial_dims, out_channels, out_channels, kernel_size, 1)
        self.act = nn.LeakyReLU(negative_slope)
        self.norm1 = make_norm(norm, spatial_dims, out_channels)
        self.norm2 = make_norm(norm, spatial_dims, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two conv-norm-activation steps."""
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


@register_model("dynunet")
class DynUNet(HostNetwork):
    """nnU-Net-like U-Net with per-level kernels/strides, instance norm, leaky ReLU and optional deep supervision.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits).
        patch_size: patch size used to plan kernels and strides with ``spacing`` (default 128 per axis: five
            isotropic halvings). Ignored when ``kernel_size`` and ``strides`` are given.
        spacing: voxel spacing for planning (``None`` = isotropic).
        kernel_size: explicit per-level kernel sizes (ints or per-axis tuples); give together with ``strides``.
        strides: explicit per-level strides, ``strides[0]`` must be 1; at least 3 levels.
        filters: channels per level (default ``min(32 * 2**i, 320)`` in 3D, ``512`` cap in 2D).
        base_filters: first level's channels when ``filters`` is None (nnU-Net: 32).
        max_filters: cap of the doubling when ``filters`` is None (None: 320 in 3D, 512 in 2D).
        deep_supervision: number of extra low-resolution outputs (0 = off), at most ``levels - 2``.
        norm: ``"instance"`` (nnU-Net) or ``"batch"``.
        negative_slope: leaky ReLU slope.
        pdcr_skips: indices of the two encoder stages tapped by PDCR (the paper uses skips 2 and 3); checked
            against the depth when :meth:`pdcr_taps` is called.

    Shape:
        Input ``[B, in_channels, *S]``. Eval mode, or no deep supervision: logits ``[B, num_classes, *S]``.
        Training mode with ``deep_supervision = n > 0``: a list of ``n + 1`` logits, ``[main, ds_1, ..., ds_n]``,
        where ``ds_k`` is at its own resolution ``ceil(S / output_strides()[k])`` (not resized; resize the target,
        e.g. with ``monai.losses.DeepSupervisionLoss``).

    Raises:
        ConfigError: for inconsistent kernels/strides/filters or options out of range.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        patch_size: int | Sequence[int] = 128,
        spacing: Sequence[float] | None = None,
        kernel_size: Sequence[int | Sequence[int]] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        filters: Sequence[int] | None = None,
        base_filters: int = 32,
        max_filters: int | None = None,
        deep_supervision: int = 0,
        norm: str = "instance",
        negative_slope: float = 0.01,
        pdcr_skips: tuple[int, int] = (2, 3),
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        sd = self.spatial_dims
        self.kernel_size, self.strides = self._levels(patch_size, spacing, kernel_size, strides)
        levels = len(self.strides)
        if filters is None:  # nnU-Net: 32 doubling per level, capped at 320 (3D) / 512 (2D)
            base = check_int("base_filters", base_filters, minimum=1)
            cap = check_int("max_filters", max_filters, minimum=1) if max_filters is not None else (320 if sd == 3 else 512)
            filters = [min(base * 2**i, cap) for i in range(levels)]
        self.filters = check_int_tuple("filters", filters, minimum=1)
        if len(self.filters) != levels:
            raise ConfigError(f"filters={self.filters} must have one entry per level ({levels}).")
        self.deep_supervision = check_int("deep_supervision", deep_supervision, minimum=0)
        if self.deep_supervision > levels - 2:
            raise ConfigError(
                f"deep_supervision={deep_supervision} exceeds the {levels - 2} decoder outputs below full resolution "
                f"of this {levels}-level network; use 0..{levels - 2}."
            )
        skips = check_int_tuple("pdcr_skips", pdcr_skips, length=2, minimum=0)
        if skips[0] == skips[1]:
            raise ConfigError(f"pdcr_skips={skips} must name two different encoder stages.")
        self.pdcr_skips = skips
        norm = check_choice("norm", norm, NORMS)
        slope = check_float("negative_slope", negative_slope, low=0.0)
        f, k, s = self.filters, self.kernel_size, self.strides
        self.encoder = nn.ModuleList(
            UNetBlock(sd, in_channels if i == 0 else f[i - 1], f[i], k[i], s[i], norm, slope) for i in range(levels - 1)
        )
        self.bottleneck = UNetBlock(sd, f[-2], f[-1], k[-1], s[-1], norm, slope)
        deepest = levels - 1
        self.up = nn.ModuleList(
            conv_transpose(sd, f[deepest - j], f[deepest - j - 1], s[deepest - j]) for j in range(deepest)
        )
        self.decoder = nn.ModuleList(
            UNetBlock(sd, 2 * f[deepest - j - 1], f[deepest - j - 1], k[deepest - j], (1,) * sd, norm, slope)
            for j in range(deepest)
        )
        self.head = conv(sd, f[0], num_classes, 1, bias=True)
        self.ds_heads = nn.ModuleList(
            conv(sd, f[i + 1], num_classes, 1, bias=True) for i in range(self.deep_supervision)
        )
        init_he(self, negative_slope=slope, mode="fan_in")

    @classmethod
    def plan_topology(
        cls,
        *,
        spatial_dims: int,
        input_size: Sequence[int],
        spacing: Sequence[float] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The per-level ``kernel_size`` and ``strides`` (nnU-Net-like, see :func:`plan_dynunet`).

        ``options`` given by the user win: explicit ``kernel_size`` and ``strides`` are returned as they are (lists);
        else the levels are planned from ``options["patch_size"]`` (default ``input_size``) and
        ``options["spacing"]`` (default ``spacing``, the data's target spacing). With only one of ``kernel_size`` /
        ``strides`` nothing is planned (``{}``): the constructor then names the missing one.

        Returns:
            ``{"kernel_size": [[k, ...], ...], "strides": [[s, ...], ...]}`` (one per-axis list per level), or ``{}``.

        Raises:
            ConfigError: a bad patch size or spacing (naming it).
        """
        options = dict(options or {})
        given = [options.get("kernel_size"), options.get("strides")]
        if any(v is not None for v in given):
            if all(v is not None for v in given):
                return {"kernel_size": _plain(given[0]), "strides": _plain(given[1])}
            return {}
        sd = check_int("spatial_dims", spatial_dims, minimum=1)
        patch = check_int_tuple("patch_size", options.get("patch_size", list(input_size)), length=sd)
        kernels, strides = plan_dynunet(patch, options.get("spacing", spacing))
        return {"kernel_size": [list(k) for k in kernels], "strides": [list(s) for s in strides]}

    def _levels(
        self,
        patch_size: int | Sequence[int],
        spacing: Sequence[float] | None,
        kernel_size: Sequence[int | Sequence[int]] | None,
        strides: Sequence[int | Sequence[int]] | None,
    ) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """Check explicit kernels/strides or plan them; returns ``(kernels, strides)`` per level."""
        sd = self.spatial_dims
        if (kernel_size is None) != (strides is None):
            raise ConfigError("give kernel_size and strides together (or neither, to plan them from patch_size).")
        if kernel_size is None:
            kernels, steps = plan_dynunet(check_int_tuple("patch_size", patch_size, length=sd), spacing)
        else:
            for name, value in (("kernel_size", kernel_size), ("strides", strides)):
                if isinstance(value, (int, str, bytes)) or not isinstance(value, Sequence):
                    raise ConfigError(
                        f"{name}={value!r} must be a list with one entry (int or per-axis tuple) per level."
                    )
            kernels = [check_int_tuple(f"kernel_size[{i}]", v, length=sd) for i, v in enumerate(kernel_size)]
            steps = [check_int_tuple(f"strides[{i}]", v, length=sd) for i, v in enumerate(strides)]
            if len(kernels) != len(steps):
                raise ConfigError(f"kernel_size has {len(kernels)} levels but strides has {len(steps)}.")
            if any(v % 2 == 0 for kernel in kernels for v in kernel):
                raise ConfigError(f"kernel_size={kernels} must be odd on every axis ('same' padding).")
        if len(steps) < 3:
            raise ConfigError(
                f"the network needs at least 3 levels, got {len(steps)} (strides={steps}); use a larger patch_size "
                "or give kernel_size and strides explicitly."
            )
        if any(v != 1 for v in steps[0]):
            raise ConfigError(f"strides[0]={steps[0]} must be 1 on every axis (the logits are at full resolution).")
        return kernels, steps

    def level_strides(self) -> list[tuple[int, ...]]:
        """Cumulative per-axis stride of every level relative to the input (level 0 = 1)."""
        out, total = [], [1] * self.spatial_dims
        for step in self.strides:
            total = [t * s for t, s in zip(total, step)]
            out.append(tuple(total))
        return out

    def output_strides(self) -> list[tuple[int, ...]]:
        """Strides of the training-mode outputs ``[main, ds_1, ..., ds_n]`` relative to the input."""
        levels = self.level_strides()
        return [levels[0]] + [levels[k] for k in range(1, self.deep_supervision + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (or, in training mode with deep supervision, the list ``[main, ds_1, ..., ds_n]``)."""
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = self.bottleneck(x)
        supervised = self.training and self.deep_supervision > 0
        extra: dict[int, torch.Tensor] = {}
        for j, (up, stage) in enumerate(zip(self.up, self.decoder)):
            skip = skips.pop()
            x = stage(torch.cat([crop_to(up(x), skip.shape[2:]), skip], dim=1))
            level = len(self.strides) - 2 - j
            if supervised and 1 <= level <= self.deep_supervision:
                extra[level] = self.ds_heads[level - 1](x)
        logits = self.head(x)
        return [logits] + [extra[k] for k in sorted(extra)] if supervised else logits

    def pdcr_taps(self) -> list[TapSpec]:
        """Encoder stages ``pdcr_skips`` (default the 3rd and 4th skips, ``encoder.2`` and ``encoder.3``).

        Raises:
            ConfigError: when the network is too shallow for ``pdcr_skips`` (checked here, not at construction,
                so that shallow networks without PDCR need no extra option).
        """
        levels = len(self.strides)
        if max(self.pdcr_skips) > levels - 2:
            raise ConfigError(
                f"pdcr_skips={self.pdcr_skips} must name encoder stages in 0..{levels - 2}: this {levels}-level "
                f"network has {levels - 1} skips (the paper taps (2, 3) of a 6-level network). Build it with "
                f"pdcr_skips=({max(levels - 3, 0)}, {levels - 2}) for its two deepest skips."
            )
        strides = self.level_strides()
        return [TapSpec(f"encoder.{i}", self.filters[i], strides[i], "encoder") for i in self.pdcr_skips]

    def pdcr_cross(self) -> list[tuple[str, str]]:
        """Cross-layer PDCR between the two tapped encoder stages."""
        first, second = (tap.name for tap in self.pdcr_taps())
        return [(first, second)]

    def uafs_points(self) -> list[tuple[str, int]]:
        """Every decoder stage, deepest first (the 3D reference's placement)."""
        levels = len(self.strides)
        return [(f"decoder.{j}", self.filters[levels - 2 - j]) for j in range(levels - 1)]
