"""From a run configuration to a host network with UAFS blocks inserted and its PDCR regulariser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import did_you_mean
from ..config import RunConfig
from ..errors import ConfigError
from ..models import TapSpec, create_model
from ..models.base import ROLES
from ..pdcr import PatchDragsawLoss
from ..plan import Plan
from ..taps import FeatureTaps, insert_after, list_tappable
from ..uafs import UncertaintySelect

__all__ = ["Network", "build_network", "probe_taps"]


@dataclass
class Network:
    """A host network prepared for training.

    Attributes:
        model: the host, with UAFS blocks inserted (``insert_after``) when enabled.
        pdcr: the regulariser, or ``None`` when PDCR is off.
        taps: the tapped layers (names valid in ``model``) with channels, strides and roles.
        uafs_points: names of the submodules that UAFS blocks follow.
    """

    model: nn.Module
    pdcr: PatchDragsawLoss | None
    taps: list[TapSpec]
    uafs_points: list[str]

    @property
    def tap_names(self) -> list[str]:
        return [t.name for t in self.taps]

    @property
    def strides(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.stride for t in self.taps}


def _pick(values: list[int], index: int) -> int:
    return int(values[min(index, len(values) - 1)])


def probe_taps(
    model: nn.Module, names: list[str], in_channels: int, input_size: Sequence[int]
) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Channels and per-axis stride of the submodules ``names`` from one probe forward.

    The model runs once on zeros ``[1, in_channels, *input_size]`` without gradients, in eval mode (so no
    batch-norm statistics change); every submodule's train/eval mode is restored and the hooks are removed
    afterwards. A tapped output ``[1, C, *g]`` gives ``C`` channels and the stride ``input_size / g`` per axis.

    Args:
        model: the host (with any UAFS blocks already inserted).
        names: qualified submodule names (see :func:`dragsaw.taps.list_tappable`).
        in_channels: channels of the input images.
        input_size: the spatial input size ``S`` (``data.input_size``), one entry per spatial axis.

    Returns:
        name -> ``(channels, stride)``, ``stride`` a tuple of ints with ``len(input_size)`` entries.

    Raises:
        ConfigError: the forward fails at this input size, a layer is not called or returns no
            ``[B, C, *g]`` map, or a map size does not divide the input size exactly on some axis.
    """
    size = tuple(int(v) for v in input_size)
    first = next(model.parameters(), None)
    kwargs = {"dtype": first.dtype, "device": first.device} if first is not None else {}
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, names) as taps:
            try:
                model(torch.zeros(1, in_channels, *size, **kwargs))
            except Exception as exc:  # any failure of the probe is a configuration problem: report it as one
                raise ConfigError(
                    f"pdcr.layers: probing the channels and strides of {names} failed: the model did not run on an "
                    f"input [1, {in_channels}, *data.input_size={list(size)}] ({exc}). Check data.input_size."
                ) from exc
            features = dict(taps.features)
    finally:
        for module, mode in modes.items():
            module.training = mode
    found = {}
    for name in names:
        if name not in features:
            raise ConfigError(
                f"pdcr.layers names {name!r}, which the model's forward never calls; tap a submodule that runs."
            )
        feat = features[name]
        if feat.ndim != len(size) + 2:
            raise ConfigError(
                f"pdcr.layers names {name!r}, whose output has shape {tuple(feat.shape)}, not a [B, C, *map] feature "
                f"map with {len(size)} spatial axes; tap a convolutional stage."
            )
        grid = tuple(feat.shape[2:])
        if any(g > s or s % g for s, g in zip(size, grid)):
            near = [max(1, round(s / g)) for s, g in zip(size, grid)]
            raise ConfigError(
                f"pdcr.layers names {name!r}, whose map size {list(grid)} does not divide data.input_size "
                f"{list(size)} exactly on every axis, so its stride (input size / map size) is not a whole number. "
                f"Use an input size that is a multiple of the layer's downsampling (about {near} per axis) or "
                "tap another layer."
            )
        found[name] = (int(feat.shape[1]), tuple(s // g for s, g in zip(size, grid)))
    return found


def _select_taps(model: nn.Module, config: RunConfig, in_channels: int) -> list[TapSpec]:
    """The PDCR taps: the host's declared ones, or ``pdcr.layers`` (declared or probed with :func:`probe_taps`)."""
    defaults = {t.name: t for t in model.pdcr_taps()}
    if config.pdcr.layers is None:
        return list(defaults.values())
    valid = list_tappable(model)
    for name, role in config.pdcr.layers.items():
        if role not in ROLES:
            raise ConfigError(f"pdcr.layers[{name!r}] must be one of {list(ROLES)} (the role), got {role!r}.")
        if name not in defaults and name not in valid:
            raise ConfigError(
                f"pdcr.layers names {name!r}, which is not a submodule of {config.model.name}."
                f"{did_you_mean(name, valid)} The host's "
                f"default taps are {sorted(defaults)} (all names: dragsaw.taps.list_tappable(model))."
            )
    undeclared = [n for n in config.pdcr.layers if n not in defaults]
    probed = probe_taps(model, undeclared, in_channels, config.data.input_size) if undeclared else {}
    taps = []
    for name, role in config.pdcr.layers.items():
        channels, stride = (defaults[name].channels, defaults[name].stride) if name in defaults else probed[name]
        taps.append(TapSpec(name, channels, stride, role))
    return taps


def build_network(config: RunConfig, in_channels: int, plan: Plan | None = None) -> Network:
    """Create the host from ``config.model`` and the plan's topology, insert UAFS blocks and build the PDCR
    regulariser.

    The registry builds every host (:func:`dragsaw.models.create_model`) with ``model.options`` and, over them,
    the options the plan derived from the data (``plan.network``, e.g. the DynUNet's ``kernel_size`` and
    ``strides``).

    Args:
        config: the resolved run configuration.
        in_channels: channels of the input images (from the data).
        plan: the run's plan; ``None`` derives it from ``config`` alone (:meth:`dragsaw.plan.Plan.from_config`:
            the patch size and ``data.target_spacing`` as written there).

    Returns:
        The :class:`Network` (host with UAFS blocks, the PDCR module or ``None``, taps, UAFS points).

    Raises:
        ConfigError: unknown model, options, tap or insertion-point names, or a plan made for another model.
    """
    mc, pc, uc = config.model, config.pdcr, config.uafs
    if plan is None:
        plan = Plan.from_config(config, in_channels=in_channels)
    options = {**dict(mc.options or {}), **plan.network_options(mc.name)}
    if mc.weights:
        options["weights"] = mc.weights
    model = create_model(
        mc.name, spatial_dims=mc.spatial_dims, in_channels=in_channels, num_classes=config.data.num_classes, **options
    )
    points: list[str] = []
    if uc.enabled:
        declared = dict(model.uafs_points())
        wanted = uc.points if uc.points is not None else list(declared)
        for name in wanted:
            if name not in declared:
                raise ConfigError(
                    f"uafs.points names {name!r}, which the host {mc.name!r} does not declare; its insertion points "
                    f"are {sorted(declared)}."
                )
            block = UncertaintySelect(
                declared[name], spatial_dims=mc.spatial_dims, branches=uc.branches, kernel_size=uc.kernel_size,
                hidden=uc.hidden, init_scale=uc.init_scale,
            )
            insert_after(model, name, block)
            points.append(name)

    # after the UAFS insertion: tap names (and probed shapes) refer to the final model
    taps = _select_taps(model, config, in_channels) if pc.enabled else []
    pdcr = None
    if taps:
        encoder = [t for t in taps if t.role == "encoder"]
        decoder = [t for t in taps if t.role == "decoder"]
        weights = {t.name: pc.encoder_weight for t in encoder} | {t.name: pc.decoder_weight for t in decoder}
        samples = {t.name: _pick(pc.encoder_samples, i) for i, t in enumerate(encoder)}
        samples |= {t.name: _pick(pc.decoder_samples, i) for i, t in enumerate(decoder)}
        if pc.cross_layers is not None:
            cross = [tuple(pair) for pair in pc.cross_layers]
        else:
            cross = [pair for pair in model.pdcr_cross() if all(n in weights for n in pair)]
        channels = {t.name: t.channels for t in taps}
        for pair in cross:
            unknown = [n for n in pair if n not in channels]
            if unknown:
                raise ConfigError(
                    f"pdcr.cross_layers pair {list(pair)} names untapped layers {unknown}; tap them in pdcr.layers, "
                    "or set pdcr.cross_layers=null for the host's default pair among the tapped layers (none if it "
                    "is not tapped)."
                )
        pdcr = PatchDragsawLoss(
            config.data.num_classes, weights, spatial_dims=mc.spatial_dims, samples=samples,
            patch_sizes=pc.patch_sizes, cross_layers=cross, in_channels=channels, cross_weight=pc.cross_weight,
            cross_samples=pc.cross_samples, projection_dim=pc.projection_dim, temperature=pc.temperature,
            sampling=pc.sampling, border=pc.border, orientation=pc.orientation, embedding=pc.embedding,
        )
    return Network(model=model, pdcr=pdcr, taps=taps, uafs_points=points)
