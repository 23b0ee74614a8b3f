"""From a run configuration to a host network with UAFS blocks inserted and its PDCR regulariser."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import RunConfig
from ..errors import ConfigError
from ..models import TapSpec, create_model
from ..pdcr import PatchDragsawLoss
from ..taps import insert_after, list_tappable
from ..uafs import UncertaintySelect

__all__ = ["Network", "build_network"]


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


def _select_taps(model: nn.Module, config: RunConfig) -> list[TapSpec]:
    defaults = {t.name: t for t in model.pdcr_taps()}
    if config.pdcr.layers is None:
        return list(defaults.values())
    taps = []
    for name, role in config.pdcr.layers.items():
        if name in defaults:
            taps.append(TapSpec(name, defaults[name].channels, defaults[name].stride, role))
            continue
        valid = set(list_tappable(model))
        if name not in valid:
            raise ConfigError(
                f"pdcr.layers names {name!r}, which is not a submodule of {config.model.name}; the host's default "
                f"taps are {sorted(defaults)} (all names: dragsaw.taps.list_tappable(model))."
            )
        raise ConfigError(
            f"pdcr.layers names {name!r}, whose channels and stride the host does not declare; tap one of "
            f"{sorted(defaults)} or describe it in the host's pdcr_taps()."
        )
    return taps


def build_network(config: RunConfig, in_channels: int) -> Network:
    """Create the host from ``config.model``, insert UAFS blocks and build the PDCR regulariser.

    Args:
        config: the resolved run configuration.
        in_channels: channels of the input images (from the data).

    Raises:
        ConfigError: unknown model, options, tap or insertion-point names.
    """
    mc, pc, uc = config.model, config.pdcr, config.uafs
    options = dict(mc.options or {})
    if mc.name == "dynunet":  # nnU-Net-like plan from the patch size and the data's spacing
        options.setdefault("patch_size", list(config.data.input_size))
        if config.data.target_spacing is not None:
            options.setdefault("spacing", list(config.data.target_spacing))
    if mc.weights:
        options["weights"] = mc.weights
    model = create_model(
        mc.name, spatial_dims=mc.spatial_dims, in_channels=in_channels, num_classes=config.data.num_classes, **options
    )
    taps = _select_taps(model, config) if pc.enabled else []

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
                hidden=uc.hidden,
            )
            insert_after(model, name, block)
            points.append(name)

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
                raise ConfigError(f"pdcr.cross_layers pair {list(pair)} names untapped layers {unknown}; tap them first.")
        pdcr = PatchDragsawLoss(
            config.data.num_classes, weights, spatial_dims=mc.spatial_dims, samples=samples,
            patch_sizes=pc.patch_sizes, cross_layers=cross, in_channels=channels, cross_weight=pc.cross_weight,
            cross_samples=pc.cross_samples, projection_dim=pc.projection_dim, temperature=pc.temperature,
            sampling=pc.sampling, border=pc.border, orientation=pc.orientation,
        )
    return Network(model=model, pdcr=pdcr, taps=taps, uafs_points=points)
