"""Run configuration: dataclasses mirrored by the YAML presets in ``dragsaw/presets``.

Precedence: dataclass defaults < preset YAML < preset profile (e.g. ``cpu``) < ``--set key=value`` overrides.
Modules never see these objects; the engine turns them into explicit constructor arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ._checks import is_int
from .errors import ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "PDCRConfig", "UAFSConfig", "TrainConfig", "RunConfig",
    "available_presets", "load_preset", "apply_overrides", "config_to_dict", "config_from_dict",
]


@dataclass
class DataConfig:
    """Where the data is and how it is read. ``input_size`` is (H, W) for 2D, (D, H, W) patches for 3D."""

    dataset: str = "folder"
    root: str | None = None
    extra_root: str | None = None  # e.g. PH2 for the isic2016-ph2 protocol
    num_classes: int = 2
    class_names: list[str] | None = None
    input_size: list[int] = field(default_factory=lambda: [512, 512])
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    value_map: dict[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    # 3D (Decathlon-style) data: k-fold cross-validation, spacing and modalities
    folds: int = 5
    fold: int | None = None  # None: seeded val carving as in 2D; 0..folds-1: cross-validation fold
    target_spacing: list[float] | None = None  # None: planned from the data (median spacing, nnU-Net-like)
    modalities: list[str] | None = None  # None: from dataset.json
    ct_stats: dict | None = None  # CT intensity statistics, computed from the training cases and kept for prediction
    regions: dict[str, list[int]] | None = None  # extra metrics over unions of classes (e.g. BraTS WT/TC/ET)
    # training-data experiments: train on a seeded subset of the training split (nested: 0.25 inside 0.5)
    train_fraction: float = 1.0
    subset_seed: int | None = None  # None: train.seed


@dataclass
class ModelConfig:
    """Host network by registry name, its constructor options and an optional local weights file."""

    name: str = "unet"
    spatial_dims: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


@dataclass
class PDCRConfig:
    """The PDCR regulariser (METHOD.md section 0). ``layers``/``cross_layers`` override the host's defaults.

    ``layers`` may name any submodule of the host (``dragsaw.taps.list_tappable``): names the host does not
    declare in ``pdcr_taps()`` get their channels and stride from a probe forward at ``data.input_size``.
    ``ramp_epochs``: the PDCR total is scaled by ``min(1, step / (ramp_epochs * steps_per_epoch))`` during training
    (0, the default and the paper's form: full weight from step 0).
    ``embedding``: ``"feature"`` (default, the paper's form) compares the raw sampled feature vectors; ``"mlp"``
    passes them through a per-layer head ``Linear(C, C) -> ReLU -> Linear(C, projection_dim)`` first, whose output
    can have negative cosines (cross-layer terms then use the heads instead of linear projections).
    """

    enabled: bool = True
    encoder_weight: float = 0.1
    decoder_weight: float = 0.01
    cross_weight: float = 0.01
    encoder_samples: list[int] = field(default_factory=lambda: [64, 32])
    decoder_samples: list[int] = field(default_factory=lambda: [32, 8])
    cross_samples: int = 32
    patch_sizes: list[int] | str = field(default_factory=lambda: [5, 7, 9])
    temperature: float = 1.0
    sampling: str = "grid"
    border: int | None = None
    projection_dim: int = 128
    orientation: str = "intended"
    ramp_epochs: float = 0.0  # >= 0: PDCR weight ramps linearly from 0 to 1 over this many epochs (0: no ramp)
    embedding: str = "feature"  # "feature" (raw sampled vectors) or "mlp" (a projection head per tapped layer)
    layers: dict[str, str] | None = None  # name -> role ("encoder" or "decoder"); any submodule name of the host
    cross_layers: list[list[str]] | None = None


@dataclass
class UAFSConfig:
    """The UAFS blocks (METHOD.md section 2). ``points`` overrides the host's default insertion points."""

    enabled: bool = True
    branches: int = 2
    kernel_size: int = 3
    hidden: int | None = None
    points: list[str] | None = None
    init_scale: float = 1.0  # last head layer's init x this; 1.0 = paper, 0.01 = near identity at step 0; > 0
    aux_weight: float = 0.0  # > 0: supervise every head with the label composition (needs branches = num_classes)


@dataclass
class TrainConfig:
    """Optimisation (Adam, warm-up then cosine), loss and Lightning trainer settings."""

    epochs: int = 300
    max_steps: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_epochs: float = 2.0
    min_lr: float = 1e-5
    dice_weight: float = 0.0
    class_weights: list[float] | None = None
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int = 1
    num_workers: int = 0
    seed: int = 666
    deterministic: bool = False
    val_every: int = 1
    limit_val_batches: int | float = 1.0
    iterations_per_epoch: int | None = None  # 3D: patches per epoch = iterations x batch (nnU-Net: 250)
    sw_overlap: float = 0.5  # 3D sliding-window inference: overlap of neighbouring windows
    sw_batch_size: int = 2  # 3D sliding-window inference: windows per forward
    mirror: bool = False  # 3D inference: average over flips of every axis (test-time mirroring)
    channels_last: bool = True  # keep conv weights and activations channels-last (oneDNN / tensor cores run faster)


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved as ``config.yaml`` in the run directory."""

    name: str = "run"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pdcr: PDCRConfig = field(default_factory=PDCRConfig)
    uafs: UAFSConfig = field(default_factory=UAFSConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "pdcr": PDCRConfig, "uafs": UAFSConfig, "train": TrainConfig}


def _unknown(key: str, valid, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=3)
    hint = f" Did you mean {close}?" if close else ""
    return ConfigError(f"unknown config key {where}{key!r}.{hint} Valid keys: {sorted(valid)}.")


def config_from_dict(raw: dict, where: str = "") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, rejecting unknown keys with a suggestion."""
    raw = dict(raw or {})
    raw.pop("profiles", None)
    top = {f.name for f in dataclasses.fields(RunConfig)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top:
            raise _unknown(key, top, where)
        if key in _SECTIONS:
            cls = _SECTIONS[key]
            names = {f.name for f in dataclasses.fields(cls)}
            for sub in value or {}:
                if sub not in names:
                    raise _unknown(sub, names, f"{where}{key}.")
            kwargs[key] = cls(**(value or {}))
        else:
            kwargs[key] = value
    config = RunConfig(**kwargs)
    check_config(config, where)
    return config


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field annotation (bool is not a number; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


PDCR_EMBEDDINGS = ("feature", "mlp")  # as dragsaw.pdcr.module.EMBEDDINGS (config does not import torch)

_POSITIVE = ("epochs", "batch_size", "lr", "devices", "val_every", "iterations_per_epoch", "sw_batch_size",
             "max_steps")


def check_config(config: RunConfig, where: str = "") -> None:
    """Reject values of the wrong type or range, naming the key, before anything is created or trained.

    Raises:
        ConfigError: the first bad value (``section.key``, the value, the expected type or range).
    """
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(getattr(config, section), f.name)
            if not _matches(value, hints[f.name]):
                raise ConfigError(f"{where}{section}.{f.name} must be of type {hints[f.name]}, got {value!r}; fix the "
                                  "preset or the --set value.")
    for key in _POSITIVE:
        value = getattr(config.train, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{where}train.{key} must be > 0, got {value!r}.")
    pc = config.pdcr
    if not (math.isfinite(pc.ramp_epochs) and pc.ramp_epochs >= 0):
        raise ConfigError(f"{where}pdcr.ramp_epochs must be a finite number >= 0 (0 = full PDCR weight from the first "
                          f"step), got {pc.ramp_epochs!r}.")
    if pc.embedding not in PDCR_EMBEDDINGS:
        raise ConfigError(f"{where}pdcr.embedding must be one of {list(PDCR_EMBEDDINGS)}, got {pc.embedding!r}.")
    if not 0.0 < config.data.train_fraction <= 1.0:
        raise ConfigError(f"{where}data.train_fraction must be in (0, 1], got {config.data.train_fraction!r}; e.g. "
                          "0.25 trains on a quarter of the training cases.")
    if config.data.subset_seed is not None and config.data.subset_seed < 0:
        raise ConfigError(f"{where}data.subset_seed must be an int >= 0 or null, got {config.data.subset_seed!r}.")
    dims = config.model.spatial_dims
    if dims in (2, 3) and len(config.data.input_size) != dims:
        raise ConfigError(f"{where}data.input_size must hold {dims} sizes for model.spatial_dims={dims}, got "
                          f"{config.data.input_size!r}.")
    _check_uafs(config, where)


def _check_uafs(config: RunConfig, where: str) -> None:
    """Ranges of ``uafs.init_scale`` and ``uafs.aux_weight``, and the head width the auxiliary loss needs."""
    uc = config.uafs
    if not math.isfinite(uc.init_scale) or uc.init_scale <= 0:
        raise ConfigError(
            f"{where}uafs.init_scale must be a finite number > 0, got {uc.init_scale!r}: 1.0 keeps PyTorch's default "
            "init (the paper's form), e.g. 0.01 starts each block near the identity. Exactly 0 is a saddle point "
            "(uniform softmax, where the entropy's gradient vanishes): the head would never learn."
        )
    if not math.isfinite(uc.aux_weight) or uc.aux_weight < 0:
        raise ConfigError(f"{where}uafs.aux_weight must be a finite number >= 0 (0 = off), got {uc.aux_weight!r}.")
    if uc.enabled and uc.aux_weight > 0 and uc.branches != config.data.num_classes:
        raise ConfigError(
            f"{where}uafs.aux_weight={uc.aux_weight} supervises each head with the classes of the labels, so "
            f"uafs.branches must equal data.num_classes={config.data.num_classes}, got uafs.branches={uc.branches}; "
            f"set uafs.branches={config.data.num_classes} (or uafs.aux_weight=0)."
        )


def config_to_dict(config: RunConfig) -> dict:
    """Plain nested dicts (YAML-ready)."""
    return dataclasses.asdict(config)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("options", "value_map"):
            out[key] = _merge(out[key], value)
        else:  # scalars, lists and free-form dicts (model options, value maps) are replaced whole
            out[key] = value
    return out


def _preset_dir():
    return resources.files("dragsaw") / "presets"


def available_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for entry in sorted(_preset_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            raw = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[:-5]] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out


def load_preset(name: str, profile: str | None = None) -> RunConfig:
    """Load a preset by name (or a YAML file path) and apply ``profile`` (e.g. ``"cpu"``).

    Raises:
        ConfigError: unknown preset or profile (listing the valid ones), unreadable YAML, unknown keys.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {str(path)!r} does not exist; give a preset name ({', '.join(available_presets())}) or an existing YAML file.")
        text, label = path.read_text(), str(path)
    else:
        entry = _preset_dir() / f"{name}.yaml"
        if not entry.is_file():
            names = list(available_presets())
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {close}?" if close else ""
            raise ConfigError(f"unknown preset {name!r}.{hint} Available presets: {', '.join(names)} (see `dragsaw presets`).")
        text, label = entry.read_text(), name
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {label!r} is not valid YAML: {exc}") from exc
    profiles = raw.get("profiles") or {}
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"preset {label!r} has no profile {profile!r}; available: {sorted(profiles) or 'none'}.")
        raw = _merge(raw, profiles[profile])
    raw.setdefault("name", path.stem if path.suffix else name)
    return config_from_dict(raw, where=f"in preset {label!r}: ")


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML, e.g. ``train.epochs=5``, ``pdcr.enabled=false``).

    Raises:
        ConfigError: malformed override or unknown key.
    """
    raw = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5.")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}).") from exc
        parts = key.strip().split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if depth >= 1 and part not in node:  # free-form dicts such as model.options
                    node[part] = {}
                else:
                    raise _unknown(part, [k for k, v in node.items() if isinstance(v, dict)], "in override: ")
            node = node[part]
        node[parts[-1]] = value
    return config_from_dict(raw, where="after --set: ")
