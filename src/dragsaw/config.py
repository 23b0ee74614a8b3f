"""Run configuration: dataclasses mirrored by the YAML presets in ``dragsaw/presets``.

Precedence: dataclass defaults < preset YAML < preset profile (e.g. ``cpu``) < ``--set key=value`` overrides.
Modules never see these objects; the engine turns them into explicit constructor arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, KeyValidationError, OmegaConfBaseException,
                              ValidationError)

from ._checks import did_you_mean, is_int
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
    normalization: str = "fixed"  # 2D: "fixed" (mean/std above) or "zscore" (per image and channel); 3D: by modality
    intensity_augmentation: bool = False  # nnU-Net's brightness/contrast/gamma/noise/blur/low-resolution in training
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
    """Host network by registry name, its constructor options and an optional local weights file.

    ``imports``: modules imported before the host is built, in order: dotted names importable from ``sys.path``
    (``mypkg.hosts``) or paths of ``.py`` files; importing them registers hosts of your own (``@register_model``).
    ``dragsaw train --import MODULE`` adds to it, so that ``evaluate`` / ``predict`` rebuild the host in another
    process. Hosts of installed packages (``dragsaw.models`` entry points) need no entry. See docs/user-hosts.md.
    """

    name: str = "unet"
    spatial_dims: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    imports: list[str] = field(default_factory=list)


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
    devices: int | str | list[int] = 1  # as Lightning takes it: 2, "auto", -1 (all), [0, 2] or "0,2"
    strategy: str = "auto"  # Lightning's strategy name: auto, ddp, ddp_find_unused_parameters_true, fsdp, ...
    num_nodes: int = 1
    sync_batchnorm: bool = False  # several devices: batch-norm statistics over the whole global batch
    compile: bool = False  # torch.compile the host network for training (a warm-up cost, then faster steps)
    num_workers: int = 0
    seed: int = 666
    deterministic: bool = False
    val_every: int = 1
    limit_val_batches: int | float = 1.0
    iterations_per_epoch: int | None = None  # 3D: patches per epoch = iterations x batch (nnU-Net: 250)
    sw_overlap: float = 0.5  # 3D sliding-window inference: overlap of neighbouring windows
    sw_batch_size: int = 2  # 3D sliding-window inference: windows per forward
    mirror: bool = False  # inference: average over flips of every spatial axis (test-time mirroring; --tta/--no-tta)
    channels_last: bool = True  # keep conv weights and activations channels-last (oneDNN / tensor cores run faster)
    # Experiment trackers (Lightning's loggers; dragsaw.engine.trackers, docs/trackers.md): csv (always written:
    # log.csv and the reports read it), tensorboard, mlflow, wandb (the last two: pip install 'dragsaw[trackers]')
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    experiment: str | None = None  # MLflow experiment / W&B project (default: the run's name)
    tracking_uri: str | None = None  # MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite in RUN/mlflow.db)


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
_FREE_FORM = (("model", "options"), ("data", "value_map"))  # mappings a profile replaces whole instead of merging


def _unknown(key: str, valid, where: str) -> ConfigError:
    return ConfigError(f"unknown config key {where}{key!r}.{did_you_mean(key, map(str, valid))} Valid keys: "
                       f"{sorted(valid)}.")


def _kind(value: Any) -> str:
    """A short description of a YAML value for messages: ``'hello' (a str)``, ``[1, 2] (a list)``."""
    text = repr(value)
    kind = {dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text[:80] + '...' if len(text) > 80 else text} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"


def _type_name(hint: Any) -> str:
    """``list[int] | null`` rather than ``typing.Optional[list[int]]`` or ``<class 'float'>``."""
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("None", "null")


def _schema(cls: type) -> type:
    """``cls`` as an OmegaConf structured-config schema: the same fields and defaults, ``Any`` for the unions of
    several types (``train.devices``, ``train.limit_val_batches``, ``pdcr.patch_sizes``) that OmegaConf 2.3 cannot
    type; their own checks (:func:`_check_devices`, :func:`_check_relations`, ``_RANGES``) cover them."""
    hints = typing.get_type_hints(cls)

    def entry(f: dataclasses.Field) -> tuple:
        if cls is RunConfig and f.name in _SECTIONS:
            section = _schema(_SECTIONS[f.name])
            return f.name, section, field(default_factory=section)
        union = typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType)
        several = union and len([a for a in typing.get_args(hints[f.name]) if a is not type(None)]) > 1
        return f.name, Any if several else hints[f.name], field(default=f.default, default_factory=f.default_factory)

    return dataclasses.make_dataclass(cls.__name__, [entry(f) for f in dataclasses.fields(cls)])


@functools.cache
def _typed_defaults() -> DictConfig:
    return OmegaConf.structured(_schema(RunConfig))


def _lookup(raw: Any, path: list[str]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


_ERRORS = (OmegaConfBaseException, OverflowError, TypeError)  # the last two name no key: a huge int for a float,
# a mapping merged into a list


def _culprit(raw: dict) -> str:
    """The first ``section.key`` (or top-level key) of ``raw`` that OmegaConf refuses on its own."""
    for top, value in raw.items():
        for name, item in value.items() if top in _SECTIONS and isinstance(value, dict) else [(None, value)]:
            try:
                OmegaConf.merge(_typed_defaults(), {top: value if name is None else {name: item}})
            except _ERRORS:
                return str(top) if name is None else f"{top}.{name}"
    return ""


def _omegaconf_error(exc: Exception, raw: dict, where: str) -> ConfigError:
    """OmegaConf's error about ``raw`` as dragsaw's message: the key (with a suggestion when unknown), the value
    and the expected type."""
    full = str(getattr(exc, "full_key", None) or _culprit(raw))
    path = [p for p in re.split(r"[.\[\]]", full) if p][:2]
    section = _SECTIONS.get(path[0]) if path else None
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and exc.key is not None:
        in_section = section is not None and len(path) == 2
        valid = [f.name for f in dataclasses.fields(section if in_section else RunConfig)]
        return _unknown(str(exc.key), valid, f"{where}{path[0]}." if in_section else where)
    hint = typing.get_type_hints(section or RunConfig).get(path[-1]) if len(path) == 1 + bool(section) else None
    key, value, fix = ".".join(path), _lookup(raw, path), "; fix the preset, config.yaml or the --set value."
    if isinstance(exc, OverflowError) and hint is not None:
        return ConfigError(f"{where}{key} must be a finite number of magnitude <= 1e30, got {_kind(value)}{fix}")
    if isinstance(exc, (ValidationError, KeyValidationError, TypeError)) and hint is not None:
        inner = "" if full == key or isinstance(exc, KeyValidationError) else \
            f", where {full} is {_kind(getattr(exc, 'value', None))}"
        return ConfigError(f"{where}{key} must be of type {_type_name(hint)}, got {_kind(value)}{inner}{fix}")
    return ConfigError(f"{where}{full or 'the configuration'}: {str(getattr(exc, 'msg', None) or exc).splitlines()[0]}"
                       f"{fix}")


def _typed(raw: dict, where: str) -> RunConfig:
    """``raw`` merged over the typed defaults by OmegaConf, which refuses unknown keys and values of the wrong type
    (converting numbers to ``float``, and values written as text where that is unambiguous: ``'5'`` to 5)."""
    try:
        data = OmegaConf.to_container(OmegaConf.merge(_typed_defaults(), raw), resolve=True, throw_on_missing=True)
    except _ERRORS as exc:
        raise _omegaconf_error(exc, raw, where) from exc
    return RunConfig(**{k: _SECTIONS[k](**v) if k in _SECTIONS else v for k, v in data.items()})


def config_from_dict(raw: dict, where: str = "") -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts, rejecting unknown keys with a suggestion.

    Raises:
        ConfigError: ``raw`` or a section (``data``, ``model``, ...) is not a mapping, an unknown key, or a value
            of the wrong type or range (see :func:`check_config`).
    """
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}the configuration must be a mapping of sections (data:, model:, pdcr:, uafs:, "
                          f"train:), got {_kind(raw)}; fix the file or the value.")
    raw = {k: v for k, v in (raw or {}).items() if k != "profiles" and not (k in _SECTIONS and v is None)}
    for key, value in raw.items():
        if key in _SECTIONS and not isinstance(value, dict):
            names = sorted(f.name for f in dataclasses.fields(_SECTIONS[key]))
            raise ConfigError(f"{where}{key} must be a mapping of its keys (e.g. {key}: {{{names[0]}: ...}}), got "
                              f"{_kind(value)}; valid keys: {names}.")
    missing = [f"{s}.{k}" for s, v in raw.items() if isinstance(v, dict) for k, x in v.items() if x == "???"]
    if missing:  # OmegaConf's "missing" marker would silently keep the defaults
        raise ConfigError(f"{where}{', '.join(missing)} hold '???', which is not a value; give their values.")
    config = _typed(raw, where)
    _check_values(config, where)
    return config


NORMALIZATIONS = ("fixed", "zscore")  # as dragsaw.data.transforms.intensity.NORMALIZATIONS (config does not import torch)
PDCR_EMBEDDINGS = ("feature", "mlp")  # as dragsaw.pdcr.module.EMBEDDINGS (config does not import torch)
PDCR_SAMPLINGS = ("grid", "random")  # as dragsaw.pdcr.sampling.SAMPLERS
PDCR_ORIENTATIONS = ("intended", "reference-2d")  # as dragsaw.pdcr.loss.ORIENTATIONS
TAP_ROLES = ("encoder", "decoder")  # as dragsaw.models.base.ROLES
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64")
"""``train.precision`` values Lightning accepts without extra packages (``Trainer(precision=...)``)."""
TRACKERS = ("csv", "tensorboard", "mlflow", "wandb")  # as dragsaw.engine.trackers.TRACKERS (config does not import it)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
"""``train.accelerator`` values (Lightning's accelerator names available without extra packages)."""

_MODULE_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
"""A dotted module name (``model.imports``), as :func:`dragsaw.models.registry.is_module_spec` takes it."""

_INT_MAX = 2**31 - 1  # counts beyond this overflow C integers in PyTorch / Lightning
_SEED_MAX = 2**32 - 1  # NumPy's seed range


_MAGNITUDE = 1e30  # no setting needs more; beyond float32's 3.4e38 PyTorch overflows


def _finite(value: Any) -> bool:
    """A real number that is not NaN or infinite, of magnitude <= 1e30 (PyTorch computes in float32)."""
    try:
        return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                and abs(value) <= _MAGNITUDE)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True)
class _Range:
    """A closed or half-open range of numbers; every bound is optional."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is a finite number inside the range."""
        if not _finite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def text(self) -> str:
        """E.g. ``a finite number > 0`` or ``in [0, 1)``."""
        lo, hi = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (self.lo, self.hi))
        if lo is not None and hi is not None:
            return f"a finite number in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"a finite number {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"a finite number {'<' if self.hi_open else '<='} {hi}"
        return "a finite number"


_NON_NEGATIVE = _Range(0)
_POSITIVE_NUMBER = _Range(0, lo_open=True)
_SEED = _Range(0, _SEED_MAX)

_RANGES: dict[str, _Range] = {
    # value, or every element of a list-valued key
    "data.num_classes": _Range(2, 1024, note="background included"),
    "data.input_size": _Range(1, 16384, note="pixels or voxels per axis"),
    "data.val_fraction": _Range(0, 1, hi_open=True),
    "data.test_fraction": _Range(0, 1, hi_open=True),
    "data.split_seed": _SEED,
    "data.mean": _Range(),
    "data.std": _POSITIVE_NUMBER,
    "data.folds": _Range(2, 1000),
    "data.fold": _Range(0, 999),
    "data.target_spacing": _POSITIVE_NUMBER,
    "data.subset_seed": _SEED,
    "model.spatial_dims": _Range(2, 3),
    "pdcr.encoder_weight": _NON_NEGATIVE,
    "pdcr.decoder_weight": _NON_NEGATIVE,
    "pdcr.cross_weight": _NON_NEGATIVE,
    "pdcr.encoder_samples": _Range(1, 4096, note="sampled locations per layer"),
    "pdcr.decoder_samples": _Range(1, 4096, note="sampled locations per layer"),
    "pdcr.cross_samples": _Range(1, 4096),
    "pdcr.patch_sizes": _Range(1, 1025, note="patch lengths in input pixels, e.g. [5, 7, 9]"),
    "pdcr.temperature": _POSITIVE_NUMBER,
    "pdcr.border": _Range(0, 1024),
    "pdcr.projection_dim": _Range(1, 4096),
    "pdcr.ramp_epochs": _Range(0, 1e6),
    "uafs.branches": _Range(2, 256),
    "uafs.kernel_size": _Range(1, 31),
    "uafs.hidden": _Range(1, 4096),
    "train.epochs": _Range(1, _INT_MAX),
    "train.max_steps": _Range(1, _INT_MAX),
    "train.batch_size": _Range(1, 65536),
    "train.lr": _Range(0, 1e6, lo_open=True),
    "train.weight_decay": _Range(0, 1e6),
    "train.warmup_epochs": _Range(0, 1e6),
    "train.min_lr": _Range(0, 1e6),
    "train.dice_weight": _NON_NEGATIVE,
    "train.class_weights": _NON_NEGATIVE,
    "train.num_nodes": _Range(1, 65536),
    "train.num_workers": _Range(0, 1024),
    "train.seed": _SEED,
    "train.val_every": _Range(1, _INT_MAX),
    "train.iterations_per_epoch": _Range(1, _INT_MAX),
    "train.sw_overlap": _Range(0, 1, hi_open=True),
    "train.sw_batch_size": _Range(1, 4096),
}
_CHOICES: dict[str, tuple] = {
    "train.precision": PRECISIONS,
    "train.accelerator": ACCELERATORS,
    "pdcr.sampling": PDCR_SAMPLINGS,
    "pdcr.orientation": PDCR_ORIENTATIONS,
    "pdcr.embedding": PDCR_EMBEDDINGS,
    "data.normalization": NORMALIZATIONS,
}
_NON_EMPTY = ("data.class_names", "data.mean", "data.std", "data.modalities", "pdcr.encoder_samples",
              "pdcr.decoder_samples", "pdcr.patch_sizes", "train.class_weights")


def _non_finite(value: Any, key: str) -> tuple[str, Any] | None:
    """The first ``(key path, value)`` under ``value`` holding NaN, an infinity or an int too large for a float."""
    if isinstance(value, dict):
        return next((bad for k, v in value.items() if (bad := _non_finite(v, f"{key}.{k}"))), None)
    if isinstance(value, list):
        return next((bad for i, v in enumerate(value) if (bad := _non_finite(v, f"{key}[{i}]"))), None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _finite(value):
        return key, value
    return None


def _check_ranges(config: RunConfig, where: str) -> None:
    """The ranges of :data:`_RANGES`, the choices of :data:`_CHOICES`, non-empty lists, finite numbers everywhere
    (also inside free-form mappings such as ``model.options``) and the relations of :func:`_check_relations`.

    Raises:
        ConfigError: naming the key, the value and the valid range or choices.
    """
    if not isinstance(config.name, str) or not config.name.strip():
        raise ConfigError(f"{where}name must be a non-empty str (the run's name, default folder runs/<name>), got "
                          f"{_kind(config.name)}.")
    if not isinstance(config.description, str):
        raise ConfigError(f"{where}description must be a str, got {_kind(config.description)}.")
    for section in _SECTIONS:
        for f in dataclasses.fields(_SECTIONS[section]):
            key, value = f"{section}.{f.name}", getattr(getattr(config, section), f.name)
            if value is None:
                continue
            if key in _NON_EMPTY and isinstance(value, list) and not value:
                raise ConfigError(f"{where}{key} must not be an empty list; give at least one value (or null where the "
                                  "key allows it for the default).")
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ConfigError(f"{where}{key} must be one of {list(_CHOICES[key])}, got {_kind(value)}.")
            rule = _RANGES.get(key)
            if rule is not None and not isinstance(value, str):
                for item in value if isinstance(value, list) else [value]:
                    if not rule.holds(item):
                        note = f" ({rule.note})" if rule.note else ""
                        each = "every entry of " if isinstance(value, list) else ""
                        raise ConfigError(f"{where}{each}{key} must be {rule.text()}{note}, got {_kind(value)}; fix "
                                          "the preset, config.yaml or the --set value.")
            bad = _non_finite(value, key)
            if bad is not None:
                raise ConfigError(f"{where}{bad[0]} must be a finite number of magnitude <= 1e30, got "
                                  f"{_kind(bad[1])}; NaN, infinities and larger numbers are refused.")
    _check_relations(config, where)


def _check_relations(config: RunConfig, where: str) -> None:
    """Values that must agree with each other (lengths against ``data.num_classes``, fold < folds, ...)."""
    dc, pc, tc = config.data, config.pdcr, config.train
    k = dc.num_classes
    for key, value in (("data.class_names", dc.class_names), ("train.class_weights", tc.class_weights)):
        if value is not None and len(value) != k:
            raise ConfigError(f"{where}{key} must hold one entry per class (data.num_classes={k}), got {len(value)}: "
                              f"{value!r}.")
    if tc.class_weights is not None and not any(w > 0 for w in tc.class_weights):
        raise ConfigError(f"{where}train.class_weights must have at least one weight > 0 (all zero makes the loss "
                          f"0/0), got {tc.class_weights!r}.")
    if dc.mean is not None and dc.std is not None and len(dc.mean) != len(dc.std):
        raise ConfigError(f"{where}data.mean and data.std must have the same length (one value per image channel), "
                          f"got {len(dc.mean)} and {len(dc.std)}.")
    if dc.fold is not None and dc.fold >= dc.folds:
        raise ConfigError(f"{where}data.fold must be in 0..{dc.folds - 1} for data.folds={dc.folds} (or null), got "
                          f"{dc.fold}.")
    dims = config.model.spatial_dims
    if dc.target_spacing is not None and len(dc.target_spacing) != dims:
        raise ConfigError(f"{where}data.target_spacing must hold {dims} spacings (one per axis of "
                          f"model.spatial_dims={dims}) or be null, got {dc.target_spacing!r}.")
    for name, classes in (dc.regions or {}).items():
        if not classes or any(not 0 <= c < k for c in classes):
            raise ConfigError(f"{where}data.regions[{name!r}] must be a non-empty list of class indices in 0..{k - 1} "
                              f"(data.num_classes={k}), got {classes!r}.")
    if isinstance(pc.patch_sizes, str):
        raise ConfigError(f"{where}pdcr.patch_sizes must be a list of patch lengths in input pixels (e.g. [5, 7, 9]), "
                          f"got {pc.patch_sizes!r}; RF-PDCR (patch_sizes='rf') needs measured receptive fields and is "
                          "only available through the Python API (PatchDragsawLoss(..., receptive_fields=...)).")
    for name, role in (pc.layers or {}).items():
        if role not in TAP_ROLES:
            raise ConfigError(f"{where}pdcr.layers[{name!r}] must be one of {list(TAP_ROLES)} (the role), got "
                              f"{role!r}.")
    for pair in pc.cross_layers or []:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"{where}every entry of pdcr.cross_layers must be a pair of two different layer names, "
                              f"e.g. [encoder.2, decoder.0], got {pair!r}.")
    _check_devices(tc.devices, where)
    lvb = tc.limit_val_batches
    if not (_Range(1, _INT_MAX).holds(lvb) if isinstance(lvb, int) else _Range(0, 1, lo_open=True).holds(lvb)):
        raise ConfigError(f"{where}train.limit_val_batches must be an int >= 1 (batches) or a float in (0, 1] (a "
                          f"fraction of the validation batches), got {_kind(lvb)}.")


_DEVICE_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")


def _check_devices(devices: Any, where: str) -> None:
    """``train.devices`` in the forms Lightning takes: a count >= 1, -1 or "auto" (all of the accelerator's
    devices), a list of device indices, or their text ("0,2"; "1," is device 1).

    Raises:
        ConfigError: naming the value and the forms above.
    """
    forms = ("a count >= 1 (e.g. 2), -1 or 'auto' (all devices), a list of device indices (e.g. [0, 2]) or their "
             "text ('0,2')")
    if is_int(devices):
        ok = devices == -1 or 1 <= devices <= 1024
    elif isinstance(devices, list):
        ok = bool(devices) and all(is_int(d) and 0 <= d < 1024 for d in devices) and len(set(devices)) == len(devices)
    elif isinstance(devices, str):
        ok = devices.strip() in ("auto", "-1") or bool(_DEVICE_LIST.match(devices))
    else:
        ok = False
    if not ok:
        raise ConfigError(f"{where}train.devices must be {forms}, got {_kind(devices)}; fix it with --set "
                          "train.devices=...")


def check_config(config: RunConfig, where: str = "") -> None:
    """Reject values of the wrong type or range, naming the key, before anything is created or trained.

    Raises:
        ConfigError: the first bad value (``section.key``, the value, the expected type or range).
    """
    _typed(config_to_dict(config), where)  # the types, as a preset or --set value gets them checked
    _check_values(config, where)


def _check_values(config: RunConfig, where: str) -> None:
    """The checks beyond the types: ranges, choices and relations."""
    pc = config.pdcr
    if not (_finite(pc.ramp_epochs) and pc.ramp_epochs >= 0):
        raise ConfigError(f"{where}pdcr.ramp_epochs must be a finite number >= 0 (0 = full PDCR weight from the first "
                          f"step), got {pc.ramp_epochs!r}.")
    if pc.embedding not in PDCR_EMBEDDINGS:
        raise ConfigError(f"{where}pdcr.embedding must be one of {list(PDCR_EMBEDDINGS)}, got {pc.embedding!r}.")
    if not 0.0 < config.data.train_fraction <= 1.0:
        raise ConfigError(f"{where}data.train_fraction must be in (0, 1], got {config.data.train_fraction!r}; e.g. "
                          "0.25 trains on a quarter of the training cases.")
    if config.data.subset_seed is not None and config.data.subset_seed < 0:
        raise ConfigError(f"{where}data.subset_seed must be an int >= 0 or null, got {config.data.subset_seed!r}.")
    for name in config.train.loggers:
        if name not in TRACKERS:
            raise ConfigError(f"{where}train.loggers: unknown tracker {_kind(name)}.{did_you_mean(str(name), TRACKERS)} "
                              f"Choose from {list(TRACKERS)}, e.g. --set 'train.loggers=[csv, mlflow]'.")
    if len(set(config.train.loggers)) != len(config.train.loggers):
        raise ConfigError(f"{where}train.loggers names a tracker twice: {config.train.loggers!r}; name each once.")
    for spec in config.model.imports:
        if not _MODULE_SPEC.match(spec) and not (spec.endswith(".py") and spec.strip() == spec and len(spec) > 3):
            raise ConfigError(f"{where}every entry of model.imports must be a module name (e.g. mypkg.hosts) or the "
                              f"path of a .py file, got {_kind(spec)}; fix the preset, config.yaml or the --import "
                              "/ --set value.")
    dims = config.model.spatial_dims
    if dims in (2, 3) and len(config.data.input_size) != dims:
        raise ConfigError(f"{where}data.input_size must hold {dims} sizes for model.spatial_dims={dims}, got "
                          f"{config.data.input_size!r}.")
    _check_uafs(config, where)
    _check_ranges(config, where)


def _check_uafs(config: RunConfig, where: str) -> None:
    """Ranges of ``uafs.init_scale`` and ``uafs.aux_weight``, and the head width the auxiliary loss needs."""
    uc = config.uafs
    if not _finite(uc.init_scale) or uc.init_scale <= 0:
        raise ConfigError(
            f"{where}uafs.init_scale must be a finite number > 0, got {uc.init_scale!r}: 1.0 keeps PyTorch's default "
            "init (the paper's form), e.g. 0.01 starts each block near the identity. Exactly 0 is a saddle point "
            "(uniform softmax, where the entropy's gradient vanishes): the head would never learn."
        )
    if not _finite(uc.aux_weight) or uc.aux_weight < 0:
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


def _merge(base: dict, update: dict | None, where: str) -> dict:
    """``update`` merged over ``base`` by OmegaConf; free-form mappings (model options, value maps) are replaced whole."""
    base, update = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}, update or {}
    for section, key in _FREE_FORM:
        if isinstance(base.get(section), dict) and isinstance(update.get(section), dict) and key in update[section]:
            base[section].pop(key, None)
    try:
        return OmegaConf.to_container(OmegaConf.merge(base, update))
    except _ERRORS as exc:
        raise _omegaconf_error(exc, update, where) from exc


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
        try:
            text, label = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read preset file {str(path)!r} ({exc}); give a readable UTF-8 YAML file."
                              ) from exc
    else:
        entry = _preset_dir() / f"{name}.yaml"
        if not entry.is_file():
            names = list(available_presets())
            raise ConfigError(f"unknown preset {name!r}.{did_you_mean(name, names)} Available presets: "
                              f"{', '.join(names)} (see `dragsaw presets`).")
        text, label = entry.read_text(), name
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {label!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {label!r} must be a YAML mapping of sections (data:, model:, pdcr:, uafs:, train:), "
                          f"got {_kind(raw)}; see the built-in presets (`dragsaw presets`) for the layout.")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) or v is None for v in profiles.values()):
        raise ConfigError(f"preset {label!r}: profiles must map profile names to mappings of sections (e.g. profiles: "
                          f"{{cpu: {{train: {{epochs: 20}}}}}}), got {_kind(profiles)}.")
    if profile is not None:
        if profile not in profiles:
            raise ConfigError(f"preset {label!r} has no profile {profile!r}; available: "
                              f"{sorted(map(str, profiles)) or 'none'}.")
        raw = _merge(raw, profiles[profile], f"in preset {label!r}, profile {profile!r}: ")
    raw.setdefault("name", path.stem if path.suffix else name)
    return config_from_dict(raw, where=f"in preset {label!r}: ")


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML, e.g. ``train.epochs=5``, ``pdcr.enabled=false``).

    Each is set with ``OmegaConf.update`` (``model.options.x=1`` sets one option, ``model.options={x: 1}`` replaces
    them all, ``data.input_size.0=256`` one entry of a list), then the result is typed and checked as a preset is.

    Raises:
        ConfigError: malformed override, unknown key, or a value of the wrong type or range.
    """
    try:
        merged = OmegaConf.create(config_to_dict(config))
    except _ERRORS as exc:  # a configuration built in Python, with values OmegaConf cannot hold
        raise _omegaconf_error(exc, config_to_dict(config), "") from exc
    for item in overrides:
        key, _, text = item.partition("=")
        if "=" not in item or not all(key.strip().split(".")):
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=5.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}).") from exc
        if value == "???":  # OmegaConf's "missing" marker would silently keep the old value
            raise ConfigError(f"override {item!r}: '???' is not a value; give the value of {key.strip()}.")
        try:
            OmegaConf.update(merged, key.strip(), value, merge=False)
        except (OmegaConfBaseException, ValueError, LookupError) as exc:  # e.g. a key into a list
            where, _, last = key.strip().rpartition(".")
            if isinstance(holds := _lookup(OmegaConf.to_container(merged), where.split(".")), list):
                raise ConfigError(f"override {item!r}: {where} holds {_kind(holds)}, which has no entry {last!r}; "
                                  f"set it whole, e.g. --set {where}=VALUE, or an entry by index (0, 1, ...).") from exc
            raise ConfigError(f"override {item!r}: {str(exc).splitlines()[0]}; give a number, text, true/false, null, "
                              "a list or a mapping.") from exc
    return config_from_dict(OmegaConf.to_container(merged), where="after --set: ")
