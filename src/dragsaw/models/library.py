"""Any segmentation network as a dragsaw host, its PDCR taps and UAFS points described by strides.

A :class:`LibraryHost` wraps an unmodified ``nn.Module`` (e.g. a MONAI network) and turns a description such as
"PDCR at encoder strides 2 and 4 and decoder strides 2 and 1, cross-layer between the two encoder taps, UAFS after
every decoder stage" into module names, with one probe forward (:func:`dragsaw.taps.suggest`) at construction::

    host = LibraryHost(monai.networks.nets.UNet(2, 1, 2, (16, 32, 64, 128), (2, 2, 2)), spatial_dims=2,
                       in_channels=1, num_classes=2, encoder_strides=(2, 4), decoder_strides=(4, 2),
                       uafs_strides="all", size_multiple=8)
    host.pdcr_taps()    # [TapSpec('net.model.0', 16, (2, 2), 'encoder'), ...]

The resolution rule, over the probe's *candidate* maps (a whole stride, one call with one tensor input, no
submodule at another stride, not changed in place afterwards; see :class:`dragsaw.taps.MapSuggestion`):

* an encoder stride ``s``: the last map of stride ``s`` on the way down (role ``encoder`` or ``bottleneck``);
* a decoder stride ``s`` (PDCR decoder taps and UAFS points): the last map of stride ``s`` on the way up (role
  ``decoder``);
* left out of both: output heads (a module at one stride whose map has ``num_classes`` channels, with everything
  inside it) and the parts of an upsampling step that still work at the coarse stride (inside a module that takes
  a map of stride ``s`` and returns a finer one, the maps of stride ``s``: e.g. SegResNet's 1x1 convolution before
  its interpolation, which would otherwise be the last map of its stride).

"Last" is in the order in which modules return, so a stage's outermost single-stride module wins over its
parts (``down_layers.1`` rather than ``down_layers.1.0.conv``); containers of several stages (skip connections
around deeper levels) are never candidates, so an inserted UAFS block never renames another point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int_tuple
from ..errors import ConfigError
from ..taps import MapSuggestion, suggest
from .base import HostNetwork, TapSpec
from .layers import crop_to

__all__ = ["LibraryHost", "pad_to_multiple"]

Stride = int | Sequence[int]


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad ``x`` ``[B, C, *S]`` at the end of every spatial axis to the next multiple of ``multiple``.

    Returns:
        ``(padded, S)``: the padded tensor (``x`` itself when no axis needs padding) and the original size.
    """
    size = tuple(int(v) for v in x.shape[2:])
    pad = [(-s) % m for s, m in zip(size, multiple)]
    if not any(pad):
        return x, size
    flat: list[int] = []
    for amount in reversed(pad):  # F.pad lists the last axis first
        flat += [0, amount]
    return F.pad(x, flat), size


def _axes(value: Stride, spatial_dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an int or one int per axis, got {value!r}.")
    if isinstance(value, int):
        value = (value,) * spatial_dims
    return check_int_tuple(what, value, length=spatial_dims, minimum=1)


def _stride_list(values: Sequence[Stride] | None, spatial_dims: int, what: str) -> list[tuple[int, ...]]:
    if values is None:
        return []
    if isinstance(values, (str, bytes, int)) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a list of strides (ints or per-axis lists), got {values!r}.")
    strides = [_axes(v, spatial_dims, f"{what}[{i}]") for i, v in enumerate(values)]
    repeated = sorted({s for s in strides if strides.count(s) > 1})
    if repeated:
        raise ConfigError(f"{what} lists the strides {repeated} more than once; give each stride once.")
    return strides


class LibraryHost(HostNetwork):
    """A host around any network, PDCR taps and UAFS points found by stride with one probe forward.

    The wrapped network is registered as the submodule ``net`` and never edited (the probe only adds and removes
    hooks), so every name in the description starts with ``net.``. The names are resolved once, here; UAFS blocks
    inserted later (``insert_after``) keep them valid.

    Args:
        net: the network, ``[B, in_channels, *S] -> [B, num_classes, *S]``.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits).
        encoder_strides: strides of the encoder PDCR taps, shallow first (an int is the same on every axis).
        decoder_strides: strides of the decoder PDCR taps.
        cross: cross-layer PDCR between the first two encoder taps.
        uafs_strides: strides of the decoder stages that UAFS follows, or ``"all"``: every decoder stride.
        size_multiple: the network's total downsampling per axis (int or per axis). ``forward`` zero-pads inputs at
            the end of each axis to a multiple of it and crops the logits back, so any size runs; PDCR needs
            training inputs that are multiples (feature maps of padded inputs have ``padded / stride`` locations),
            which :meth:`plan_topology` checks.
        probe_size: spatial size of the probe input. Default: ``2 * size_multiple`` per axis, the smallest input
            whose coarsest map has two locations per axis (instance norm needs more than one). The strides do not
            depend on it as long as every map divides it; a larger probe only costs time.

    Raises:
        ConfigError: the network does not run on the probe input, or an option is malformed. A stride that the
            network does not have is reported by :meth:`pdcr_taps` / :meth:`uafs_points` (so that a network
            without those layers still builds when PDCR or UAFS is off), naming the strides it has.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        encoder_strides: Sequence[Stride] | None = (),
        decoder_strides: Sequence[Stride] | None = (),
        cross: bool = True,
        uafs_strides: Sequence[Stride] | str | None = "all",
        size_multiple: Stride = 1,
        probe_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        if not isinstance(net, nn.Module):
            raise ConfigError(f"LibraryHost wraps an nn.Module, got {type(net).__name__}.")
        sd = self.spatial_dims
        self.size_multiple = _axes(size_multiple, sd, "size_multiple")
        self.encoder_strides = _stride_list(encoder_strides, sd, "encoder_strides")
        self.decoder_strides = _stride_list(decoder_strides, sd, "decoder_strides")
        if isinstance(uafs_strides, str):
            if uafs_strides != "all":
                raise ConfigError(f"uafs_strides must be a list of strides or 'all', got {uafs_strides!r}.")
            self.uafs_strides: list[tuple[int, ...]] | str = "all"
        else:
            self.uafs_strides = _stride_list(uafs_strides, sd, "uafs_strides")
        if not isinstance(cross, bool):
            raise ConfigError(f"cross must be true or false, got {cross!r}.")
        self.cross = cross
        if probe_size is None:
            probe = tuple(2 * m for m in self.size_multiple)
        else:
            probe = _axes(probe_size, sd, "probe_size")
        self.probe_size = probe
        self.net = net
        shape = (1, self.in_channels, *probe)
        try:
            maps = suggest(net, shape)
        except ValueError as exc:
            raise ConfigError(
                f"{type(self).__name__}: the probe forward on an input {list(shape)} failed ({exc}). Pass "
                "probe_size (and size_multiple) that the network accepts."
            ) from exc
        self._resolve(maps, shape)

    # ------------------------------------------------------------------ resolution
    def _resolve(self, maps: list[MapSuggestion], shape: tuple[int, ...]) -> None:
        ident = {m.name: id(self.net.get_submodule(m.name)) for m in maps}

        def inside(m: MapSuggestion) -> set[int]:
            outer = self.net.get_submodule(m.name)
            return {id(sub) for sub in outer.modules() if sub is not outer}

        left_out: set[int] = set()  # output heads with their insides, and the coarse parts of upsampling steps
        for m in maps:
            if m.channels == self.num_classes and not m.spans_strides:
                left_out |= inside(m) | {ident[m.name]}
            elif m.stride and m.input_stride and math.prod(m.input_stride) > math.prod(m.stride):
                parts = inside(m)
                left_out |= {ident[n.name] for n in maps if n.stride == m.input_stride and ident[n.name] in parts}
        usable = [m for m in maps if m.candidate and ident[m.name] not in left_out]
        down = [m for m in usable if m.role in ("encoder", "bottleneck")]
        up = [m for m in usable if m.role == "decoder"]
        self._down_strides = sorted({m.stride for m in down}, key=math.prod)
        self._up_strides = sorted({m.stride for m in up}, key=math.prod, reverse=True)
        self._probe_shape = shape
        self._errors: dict[str, str] = {}

        def last(candidates: list[MapSuggestion], stride: tuple[int, ...]) -> MapSuggestion | None:
            found = [m for m in candidates if m.stride == stride]
            return found[-1] if found else None

        taps: list[TapSpec] = []
        for what, strides, pool, role in (
            ("encoder_strides", self.encoder_strides, down, "encoder"),
            ("decoder_strides", self.decoder_strides, up, "decoder"),
        ):
            for stride in strides:
                found = last(pool, stride)
                if found is None:
                    self._errors.setdefault("pdcr", self._missing(what, stride, role))
                    continue
                taps.append(TapSpec(f"net.{found.name}", found.channels, found.stride, role))
        self._taps = taps
        wanted = self._up_strides if self.uafs_strides == "all" else self.uafs_strides
        points: list[tuple[int, str, int]] = []
        for stride in wanted:
            found = last(up, stride)
            if found is None:
                self._errors.setdefault("uafs", self._missing("uafs_strides", stride, "decoder"))
                continue
            points.append((found.order, f"net.{found.name}", found.channels))
        self._points = [(name, channels) for _, name, channels in sorted(points)]

    def _missing(self, what: str, stride: tuple[int, ...], role: str) -> str:
        way = "down (encoder)" if role == "encoder" else "up (decoder)"
        return (
            f"{type(self).__name__}: {what} asks for stride {list(stride)}, but no candidate map has that stride on "
            f"the way {way}. The network has encoder strides {[list(s) for s in self._down_strides]} and decoder "
            f"strides {[list(s) for s in self._up_strides]} (probe input {list(self._probe_shape)}); choose among "
            f"them, or list every map with dragsaw.taps.suggest(model.net, {tuple(self._probe_shape)})."
        )

    def _raise(self, key: str) -> None:
        if key in self._errors:
            raise ConfigError(self._errors[key])

    # ------------------------------------------------------------------ host description
    def pdcr_taps(self) -> list[TapSpec]:
        """The encoder taps (in ``encoder_strides`` order), then the decoder taps.

        Raises:
            ConfigError: a requested stride has no map (names the strides the network has).
        """
        self._raise("pdcr")
        return list(self._taps)

    def pdcr_cross(self) -> list[tuple[str, str]]:
        """Cross-layer PDCR between the first two encoder taps (none with ``cross=False`` or fewer taps)."""
        self._raise("pdcr")
        encoder = [t.name for t in self._taps if t.role == "encoder"]
        return [(encoder[0], encoder[1])] if self.cross and len(encoder) >= 2 else []

    def uafs_points(self) -> list[tuple[str, int]]:
        """``(name, channels)`` of the decoder stages at ``uafs_strides``, in forward order (deepest first).

        Raises:
            ConfigError: a requested stride has no decoder stage.
        """
        self._raise("uafs")
        return list(self._points)

    @classmethod
    def size_multiple_for(cls, spatial_dims: int, options: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The total downsampling of the network these ``options`` build (``None``: unknown, nothing checked)."""
        return None

    @classmethod
    def plan_topology(
        cls,
        *,
        spatial_dims: int,
        input_size: Sequence[int],
        spacing: Sequence[float] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Nothing to plan (``{}``), but the training input size must be a multiple of the network's downsampling.

        Raises:
            ConfigError: ``input_size`` is not a multiple of :meth:`size_multiple_for` on some axis.
        """
        multiple = cls.size_multiple_for(spatial_dims, dict(options or {}))
        size = [int(v) for v in input_size]
        if multiple is not None and any(s % m for s, m in zip(size, multiple)):
            fitted = [max(m, round(s / m) * m) for s, m in zip(size, multiple)]
            raise ConfigError(
                f"data.input_size={size} is not a multiple of {list(multiple)}, the total downsampling of this "
                f"{cls.__name__} per axis: its feature maps would not tile the input and the PDCR taps would not "
                f"have whole strides. Use e.g. data.input_size={fitted}."
            )
        return {}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes, *S]``: the wrapped network on ``x`` zero-padded to ``size_multiple``, cropped."""
        self.check_input(x)
        padded, size = pad_to_multiple(x, self.size_multiple)
        out = self.net(padded)
        if padded is x:
            return out
        if isinstance(out, (list, tuple)):
            return type(out)(crop_to(o, size) for o in out)
        return crop_to(out, size)
