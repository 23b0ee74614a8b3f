"""The host description every dragsaw network publishes: where PDCR taps features and where UAFS goes.

A host is a plain :class:`torch.nn.Module` whose forward returns logits of the input's spatial size. It names,
by qualified submodule name (valid for ``model.get_submodule``), the layers the paper taps for PDCR and the
layers after which it inserts UAFS, with their channels and strides, so that the wrapper can attach both with
forward hooks and :func:`dragsaw.taps.insert_after` without editing the network.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .._checks import SUPPORTED_DIMS, check_int, check_spatial_dims

__all__ = ["HostNetwork", "TapSpec"]

ROLES = ("encoder", "decoder")


@dataclass(frozen=True)
class TapSpec:
    """One feature map the PDCR regulariser can tap.

    Attributes:
        name: qualified submodule name; the tapped feature is exactly that module's output.
        channels: channels ``C`` of the feature.
        stride: per-axis downsampling factor relative to the input; the feature has ``ceil(S / stride)`` locations
            per axis for an input of size ``S``.
        role: ``"encoder"`` or ``"decoder"`` (they get different loss weights and sample counts).
    """

    name: str
    channels: int
    stride: tuple[int, ...]
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"TapSpec.name must be a non-empty module name, got {self.name!r}.")
        check_int("TapSpec.channels", self.channels, minimum=1)
        if not isinstance(self.stride, tuple) or not self.stride or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.stride
        ):
            raise ConfigError(f"TapSpec.stride must be a tuple of positive ints (one per axis), got {self.stride!r}.")
        if self.role not in ROLES:
            raise ConfigError(f"TapSpec.role must be one of {list(ROLES)}, got {self.role!r}.")


class HostNetwork(nn.Module, abc.ABC):
    """Base of the registered networks: input checks plus the PDCR/UAFS host description.

    Subclasses build their layers in ``__init__`` (after ``super().__init__``), implement ``forward`` (logits
    ``[B, num_classes, *S]`` for an input ``[B, in_channels, *S]``) and the three description methods.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: channels of the input image.
        num_classes: output channels (logits).

    Raises:
        ConfigError: for an unsupported ``spatial_dims`` or non-positive channel counts.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims, SUPPORTED_DIMS)
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)

    @abc.abstractmethod
    def pdcr_taps(self) -> list[TapSpec]:
        """The paper's default PDCR layers for this network (encoder taps first, then decoder taps)."""

    @abc.abstractmethod
    def pdcr_cross(self) -> list[tuple[str, str]]:
        """The default cross-layer PDCR pairs, as pairs of tap names (shallower layer first)."""

    @abc.abstractmethod
    def uafs_points(self) -> list[tuple[str, int]]:
        """``(module name, channels)`` of the paper's default UAFS insertion points, in forward order."""

    @classmethod
    def plan_topology(
        cls,
        *,
        spatial_dims: int,
        input_size: Sequence[int],
        spacing: Sequence[float] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Constructor options that fix this host's layout for patches of ``input_size`` at voxel ``spacing``.

        A run computes them once from its data (``dragsaw.plan.Plan``), records them in its plan and passes them
        back to the constructor (with the user's ``options``), so the network is rebuilt identically at inference.
        Hosts whose layout does not depend on the data (the default) return ``{}``.

        Args:
            spatial_dims: 2 or 3.
            input_size: the training input (2D) or patch (3D) size, one int per spatial axis.
            spacing: the target voxel spacing per axis (``None``: isotropic / unknown).
            options: the user's constructor options (``model.options``); explicit ones win over planned ones.

        Returns:
            JSON-serialisable keyword arguments of the constructor (lists, ints, floats, strings).

        Raises:
            ConfigError: ``input_size``, ``spacing`` or ``options`` cannot give a layout (names the value).
        """
        return {}

    def check_input(self, x: torch.Tensor) -> None:
        """Check that ``x`` is ``[B, in_channels, *S]`` with ``spatial_dims`` spatial axes.

        Raises:
            DataError: naming the expected and the actual shape.
        """
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{type(self).__name__} expects a torch.Tensor input, got {type(x).__name__}.")
        name = type(self).__name__
        axes = "H, W" if self.spatial_dims == 2 else "D, H, W"
        if x.ndim != self.spatial_dims + 2:
            raise DataError(
                f"{name} was built with spatial_dims={self.spatial_dims} and expects an input [B, C, {axes}] "
                f"({self.spatial_dims + 2} axes), got shape {tuple(x.shape)}. Add the batch/channel axes or build "
                f"the model with spatial_dims={x.ndim - 2}."
            )
        if x.shape[1] != self.in_channels:
            raise DataError(
                f"{name} was built with in_channels={self.in_channels}, got an input with {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}). Inputs are channels-first; build the model with "
                f"in_channels={x.shape[1]} if that is intended."
            )
        if x.numel() == 0:
            raise DataError(f"{name} got an empty input of shape {tuple(x.shape)}.")
