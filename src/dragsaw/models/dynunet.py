"""The paper's 3D host: MONAI's own ``DynUNet`` (nnU-Net-like, no residual blocks), with kernels and strides planned
nnU-Net-style from the patch size and voxel spacing (:func:`plan_dynunet`).

Blocks are conv -> instance norm -> leaky ReLU (0.01), twice; the first conv of a level carries its stride; the
decoder upsamples with a transposed conv (kernel = stride) and concatenates ``[upsampled, skip]``. The network is
``monai.networks.nets.DynUNet`` itself, unedited, under ``net`` (MONAI also registers every block a second time
under ``net.skip_layers``; the names below are the first ones)::

    net.input_block, net.downsamples.i   encoder stages: skip 0 and skip i + 1
    net.bottleneck                       the deepest stage
    net.upsamples.j                      decoder stage j (j = 0 deepest; two inputs: upsampled and skip), whose
    net.upsamples.j.conv_block           convolutions on [upsampled, skip] are the UAFS points
    net.output_block                     1x1 conv -> num_classes
    net.deep_supervision_heads.k         deep-supervision 1x1 heads on the decoder output at level k + 1

MONAI's network needs inputs divisible by its total stride: :func:`plan_dynunet` plans only such layouts for the
training patch, and ``forward`` zero-pads other inputs at the end of each axis and crops the outputs back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .._checks import check_choice, check_float, check_int, check_int_tuple
from .base import HostNetwork, TapSpec
from .layers import NORMS, crop_to
from .library import pad_to_multiple
from .registry import register_model

__all__ = ["DynUNet", "plan_dynunet"]


def plan_dynunet(
    patch_size: Sequence[int], spacing: Sequence[float] | None = None, *, min_size: int = 8
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Derive per-level kernel sizes and strides from a patch size and spacing (a simple nnU-Net-like rule).

    Level 0 has stride 1. An axis is halved for the next level while its size is even and at least ``min_size``
    and its current spacing is at most twice the finest current spacing; halving doubles its spacing. (Even sizes
    only: the patch is then a multiple of the total stride, as MONAI's ``DynUNet`` needs.) A level's kernel is 3
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
        step = tuple(2 if f and n >= min_size and n % 2 == 0 else 1 for f, n in zip(fine, sizes))
        if max(step) == 1:
            return kernels, strides
        strides.append(step)
        sizes = [n // s for n, s in zip(sizes, step)]
        current = [c * s for c, s in zip(current, step)]


def _plain(levels: object) -> object:
    """Per-level values with tuples turned into lists (JSON); anything else unchanged (checked by the constructor)."""
    if isinstance(levels, (list, tuple)):
        return [list(v) if isinstance(v, (list, tuple)) else v for v in levels]
    return levels


@register_model("dynunet")
class DynUNet(HostNetwork):
    """MONAI's ``DynUNet``: per-level kernels/strides, instance norm, leaky ReLU and optional deep supervision.

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
        Input ``[B, in_channels, *S]``, any ``S`` (zero-padded to a multiple of the total stride, see
        :attr:`size_multiple`, and cropped back). Eval mode, or no deep supervision: logits
        ``[B, num_classes, *S]``. Training mode with ``deep_supervision = n > 0``: a list of ``n + 1`` logits,
        ``[main, ds_1, ..., ds_n]``, where ``ds_k`` is at its own resolution ``ceil(S / output_strides()[k])``: the
        heads' outputs before MONAI's forward interpolates them to full size and stacks them (resize the target,
        as the training task does).

    Attributes:
        net: the ``monai.networks.nets.DynUNet`` (checkpoints of dragsaw's earlier copy, whose parameters were named
            ``encoder.i`` / ``up.j`` / ``decoder.j`` / ``head``, do not load).
        size_multiple: the total stride per axis, to which ``forward`` pads its input.

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
        self.size_multiple = self.level_strides()[-1]
        from monai.networks.nets import DynUNet as Net

        self.net = Net(
            sd, in_channels, num_classes, kernel_size=[list(v) for v in self.kernel_size],
            strides=[list(v) for v in self.strides], upsample_kernel_size=[list(v) for v in self.strides[1:]],
            filters=list(self.filters), norm_name=(norm.upper(), {"affine": True}),
            act_name=("leakyrelu", {"inplace": True, "negative_slope": slope}),
            deep_supervision=self.deep_supervision > 0, deep_supr_num=max(self.deep_supervision, 1),
        )

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
        """Logits (or, in training mode with deep supervision, the list ``[main, ds_1, ..., ds_n]``).

        Runs MONAI's network as its own ``forward`` does (``skip_layers`` then ``output_block``) but returns the
        deep-supervision heads at their own resolution (MONAI keeps them in ``net.heads``) instead of interpolating
        them to full size and stacking them.
        """
        self.check_input(x)
        padded, size = pad_to_multiple(x, self.size_multiple)
        net = self.net
        logits = crop_to(net.output_block(net.skip_layers(padded)), size)
        if not (self.training and self.deep_supervision > 0):
            return logits
        extra = [
            crop_to(head, [math.ceil(s / t) for s, t in zip(size, stride)])
            for head, stride in zip(net.heads, self.output_strides()[1:], strict=True)
        ]
        return [logits, *extra]

    def pdcr_taps(self) -> list[TapSpec]:
        """Encoder stages ``pdcr_skips``: by default the 3rd and 4th skips, ``net.downsamples.1`` and ``.2``.

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
        return [TapSpec(self.skip_name(i), self.filters[i], strides[i], "encoder") for i in self.pdcr_skips]

    @staticmethod
    def skip_name(index: int) -> str:
        """The module name of encoder stage (skip) ``index``: ``net.input_block`` or ``net.downsamples.{index-1}``."""
        return "net.input_block" if index == 0 else f"net.downsamples.{index - 1}"

    def pdcr_cross(self) -> list[tuple[str, str]]:
        """Cross-layer PDCR between the two tapped encoder stages."""
        first, second = (tap.name for tap in self.pdcr_taps())
        return [(first, second)]

    def uafs_points(self) -> list[tuple[str, int]]:
        """Every decoder stage, deepest first (the 3D reference's placement): ``net.upsamples.j.conv_block``."""
        levels = len(self.strides)
        return [(f"net.upsamples.{j}.conv_block", self.filters[levels - 2 - j]) for j in range(levels - 1)]
