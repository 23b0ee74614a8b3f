"""The plan of a run: what training derived from its data, kept beside ``config.yaml`` and in every checkpoint.

A run's configuration says what the user asked for; its plan says what was derived from the training data
(nnU-Net's "plan"): the target voxel spacing, the modalities and CT statistics of volumes, the intensity
normalisation, the channels, and the network topology (e.g. the DynUNet's kernels and strides). Training computes
it once (:meth:`Plan.from_data`), writes ``RUN/plan.json`` and stores it in the checkpoint; resuming, evaluating and
predicting reuse it, so ``config.yaml`` stays exactly as the user wrote it. Values the user set in the
configuration (e.g. ``data.target_spacing``) win over planned ones; the plan records them and lists their keys
in ``user_set``.

Checkpoints written before plans existed carry the derived values in their configuration instead;
:meth:`Plan.from_config` rebuilds their plan from it.

Usage::

    plan = Plan.load("runs/brain-f2/plan.json")
    plan.target_spacing                     # e.g. [1.0, 1.0, 1.0]: the training cases' median spacing
    plan.network["options"]["strides"]      # the DynUNet's strides per level, e.g. [[1, 1, 1], [2, 2, 2], ...]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import write_json_atomic
from .config import RunConfig
from .errors import ConfigError

__all__ = ["PLAN_FILE", "PLAN_VERSION", "NORMALIZATIONS", "Plan"]

PLAN_FILE = "plan.json"
"""The plan's file name in a run directory (beside ``config.yaml``)."""

PLAN_VERSION = 1
"""The version of the plan format this dragsaw writes and reads."""

NORMALIZATIONS = ("fixed", "zscore", "modality")
"""``Plan.normalization``: 2D ``"fixed"`` (``mean``/``std``) or ``"zscore"`` (per image and channel); 3D
``"modality"`` (CT channels clipped and scaled with ``ct_stats``, the others z-scored per volume)."""

_FIX_FILE = ("delete it: `dragsaw train --resume RUN` then takes the plan from the run's checkpoint (or plans again "
             "from the data), and evaluate and predict always use the checkpoint's own copy; or restore it from a "
             "backup")


@dataclass
class Plan:
    """What a run derived from its data; everything inference needs besides the configuration and the weights.

    Attributes:
        spatial_dims: 2 (images) or 3 (volumes).
        input_size: the network's input size (2D, ``[H, W]``) or training patch / sliding-window size (3D,
            ``[X, Y, Z]``), ints.
        num_classes: K, background included.
        in_channels: channels of the input images / volumes (``None`` only in plans rebuilt from an old
            configuration without data).
        normalization: one of :data:`NORMALIZATIONS`.
        mean, std: 2D ``"fixed"`` normalisation, one float per channel (or one for all); ``None`` otherwise (or
            for a channel count without a default).
        target_spacing: voxel spacing in mm per RAS axis (3D; 2D only when the user set one for the topology).
        modalities: one name per channel (3D), e.g. ``["FLAIR", "T1w"]`` or ``["CT"]``.
        ct_stats: ``{"channel index": {"mean", "std", "percentile_00_5", "percentile_99_5"}}`` of the CT channels
            (3D), else ``None``.
        network: ``{"name": model name, "options": {...}}``: the constructor options that fix the host's layout
            for this data (DynUNet: ``kernel_size`` and ``strides`` per level; ``{}`` for other hosts).
        user_set: configuration keys whose values the user gave (they are recorded here instead of planned ones),
            e.g. ``["data.target_spacing"]``.
        version: :data:`PLAN_VERSION`.
    """

    spatial_dims: int
    input_size: list[int]
    num_classes: int
    in_channels: int | None
    normalization: str
    mean: list[float] | None = None
    std: list[float] | None = None
    target_spacing: list[float] | None = None
    modalities: list[str] | None = None
    ct_stats: dict[str, dict[str, float]] | None = None
    network: dict[str, Any] = field(default_factory=dict)
    user_set: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION

    # ------------------------------------------------------------------ making a plan
    @classmethod
    def from_data(cls, config: RunConfig, train_cases: Sequence, *, in_channels: int | None = None) -> Plan:
        """Plan a run from its training cases (never validation or test cases: that would leak).

        3D: the target spacing is the training cases' median spacing (nnU-Net's rule, see
        :func:`dragsaw.data.dataset_properties`), the modalities come from the cases (``dataset.json``), CT
        statistics are collected from the training labels' foreground (:func:`dragsaw.data.ct_statistics`). 2D: the
        channels come from the first training image's header and ``"fixed"`` normalisation gets the pipeline's
        default mean/std for that channel count (ImageNet for RGB, 0.5/0.25 for grayscale). In both, the network
        topology comes from the host (:func:`dragsaw.models.plan_topology`). Values set in ``config``
        (``data.target_spacing``, ``data.modalities``, ``data.ct_stats``, ``data.mean``, ``data.std``, model
        options) win and are listed in ``user_set``; ``config`` is not changed.

        Args:
            config: the run's configuration (as the user wrote it).
            train_cases: the training :class:`dragsaw.data.Case` objects (at least one).
            in_channels: the input channels when the caller knows them (else read from the data).

        Returns:
            The plan.

        Raises:
            ConfigError: no training cases, or values that give no network layout (naming them).
            DataError: unreadable headers or labels.
        """
        from .data import ct_statistics, dataset_properties, image_channels

        cases = list(train_cases)
        dc = config.data
        if not cases:
            raise ConfigError(f"cannot plan the run: dataset {dc.dataset!r} at {dc.root!r} has no training cases; "
                              "point --data-root at a dataset with training cases.")
        user: list[str] = []
        if config.model.spatial_dims == 3:
            if dc.target_spacing is not None:
                spacing = [float(v) for v in dc.target_spacing]
                user.append("data.target_spacing")
            else:
                spacing = [float(v) for v in dataset_properties(cases)["target_spacing"]]
            if dc.modalities is not None:
                modalities = [str(m) for m in dc.modalities]
                user.append("data.modalities")
            else:
                modalities = [str(m) for m in (cases[0].extra.get("modalities") or [])] or None
            if dc.ct_stats is not None:
                ct_stats = _plain_stats(dc.ct_stats)
                user.append("data.ct_stats")
            elif modalities and any(m.strip().upper() == "CT" for m in modalities):
                ct_stats = _plain_stats(ct_statistics(cases, modalities=modalities))
            else:
                ct_stats = None
            channels = len(modalities) if modalities else in_channels
            return cls._assemble(config, channels, spacing, modalities, ct_stats, user)
        if in_channels is None:
            in_channels = image_channels(cases[0].image)
        return cls._assemble(config, in_channels, None, None, None, user)

    @classmethod
    def from_config(cls, config: RunConfig, *, in_channels: int | None = None) -> Plan:
        """The plan of a configuration alone, without data: for checkpoints written before plans existed, whose
        configurations carry the derived values (``data.target_spacing``, ``data.modalities``, ``data.ct_stats``),
        and for networks built directly from a configuration.

        Values missing from ``config`` stay ``None`` (3D preprocessing then asks for them); every value that is
        present is listed in ``user_set``.

        Args:
            config: a run configuration.
            in_channels: the network's input channels, when known (e.g. ``hparams["in_channels"]``).

        Returns:
            The plan.

        Raises:
            ConfigError: an unknown model or values that give no network layout.
        """
        dc = config.data
        user = [f"data.{k}" for k in ("target_spacing", "modalities", "ct_stats") if getattr(dc, k) is not None]
        modalities = None if dc.modalities is None else [str(m) for m in dc.modalities]
        if in_channels is None and modalities and config.model.spatial_dims == 3:
            in_channels = len(modalities)
        return cls._assemble(
            config, in_channels, None if dc.target_spacing is None else [float(v) for v in dc.target_spacing],
            modalities, None if dc.ct_stats is None else _plain_stats(dc.ct_stats), user,
        )

    @classmethod
    def _assemble(cls, config: RunConfig, in_channels: int | None, spacing: list[float] | None,
                  modalities: list[str] | None, ct_stats: dict | None, user: list[str]) -> Plan:
        """The common part of :meth:`from_data` and :meth:`from_config`: normalisation and network topology."""
        from .models import plan_topology

        dc, mc = config.data, config.model
        dims = int(mc.spatial_dims)
        mean = std = None
        if dims == 3:
            normalization = "modality"
        else:
            normalization = dc.normalization
            if dc.target_spacing is not None:  # 2D: only a spacing the user gave (for the topology)
                spacing = [float(v) for v in dc.target_spacing]
                user.append("data.target_spacing")
            if normalization == "fixed":  # the 2D pipeline's defaults (transforms2d.NormalizeImage) by channels
                from .data.transforms.images import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD

                defaults = {1: (GRAY_MEAN, GRAY_STD), 3: (IMAGENET_MEAN, IMAGENET_STD)}.get(in_channels, (None, None))
                mean = [float(v) for v in dc.mean] if dc.mean is not None else _list(defaults[0])
                std = [float(v) for v in dc.std] if dc.std is not None else _list(defaults[1])
                user += [f"data.{k}" for k in ("mean", "std") if getattr(dc, k) is not None]
        input_size = [int(v) for v in dc.input_size]
        options = dict(mc.options or {})
        topology = plan_topology(mc.name, spatial_dims=dims, input_size=input_size, spacing=spacing, options=options)
        user += [f"model.options.{k}" for k in topology if k in options]
        return cls(
            spatial_dims=dims, input_size=input_size, num_classes=int(dc.num_classes),
            in_channels=None if in_channels is None else int(in_channels), normalization=normalization, mean=mean,
            std=std, target_spacing=spacing, modalities=modalities, ct_stats=ct_stats,
            network={"name": mc.name, "options": topology}, user_set=list(dict.fromkeys(user)),
        )

    # ------------------------------------------------------------------ using a plan
    def network_options(self, model_name: str) -> dict[str, Any]:
        """The planned constructor options of the host ``model_name`` (merged over ``model.options`` when building).

        Raises:
            ConfigError: the plan was made for another host (naming both).
        """
        planned = self.network.get("name")
        if planned is not None and planned != model_name:
            raise ConfigError(f"the plan was made for the model {planned!r}, not {model_name!r}: a run's plan and its "
                              "model.name must agree; plan the run again (a new run) for another model.")
        return dict(self.network.get("options") or {})

    def differences(self, config: RunConfig) -> list[str]:
        """The values ``config`` sets that this plan does not hold (e.g. a resumed run given another
        ``data.target_spacing``), as ``"data.key: config value != plan value"`` lines; empty when they agree.

        Only what the plan records is compared: ``data.input_size`` always, ``data.target_spacing``,
        ``data.modalities``, ``data.ct_stats``, ``data.mean`` and ``data.std`` where ``config`` sets them.
        """
        dc = config.data
        pairs = [("input_size", [int(v) for v in dc.input_size], self.input_size)]
        if dc.target_spacing is not None:
            pairs.append(("target_spacing", [float(v) for v in dc.target_spacing], self.target_spacing))
        if dc.modalities is not None:
            pairs.append(("modalities", [str(m) for m in dc.modalities], self.modalities))
        if dc.ct_stats is not None:
            pairs.append(("ct_stats", _plain_stats(dc.ct_stats), self.ct_stats))
        if self.spatial_dims == 2:
            pairs.append(("normalization", dc.normalization, self.normalization))
            for key in ("mean", "std"):
                if getattr(dc, key) is not None and self.normalization == "fixed":
                    pairs.append((key, [float(v) for v in getattr(dc, key)], getattr(self, key)))
        return [f"data.{key}: {mine!r} != {planned!r}" for key, mine, planned in pairs if mine != planned]

    def reader(self, *, value_map=None, image_shift: str | None = None):
        """The :class:`dragsaw.data.CaseReader` that reads data as this plan says: an ``ImageReader`` (input size,
        normalisation) for 2D, a ``VolumeReader`` (target spacing, modalities, CT statistics, patch size) for 3D.

        Args:
            value_map: the configuration's ``data.value_map`` (stored label value -> class index).
            image_shift: a controlled intensity shift of every image (2D robustness evaluation).

        Raises:
            ConfigError: a 3D plan without a target spacing (see :meth:`require_spacing`), or a shift for volumes.
        """
        from .data import ImageReader, VolumeReader

        if self.spatial_dims == 3:
            return VolumeReader(self.require_spacing(), self.modalities, self.input_size, num_classes=self.num_classes,
                                ct_stats=self.ct_stats, value_map=value_map, image_shift=image_shift)
        return ImageReader(self.input_size, num_classes=self.num_classes, value_map=value_map, mean=self.mean,
                           std=self.std, normalization=self.normalization, image_shift=image_shift)

    def require_spacing(self) -> list[float]:
        """The 3D target spacing, for preprocessing.

        Raises:
            ConfigError: the plan has none (an old configuration without ``data.target_spacing``).
        """
        if self.target_spacing is None:
            raise ConfigError("the model's plan has no target spacing (a checkpoint from before plans whose "
                              "configuration lacks data.target_spacing); give it with --set "
                              "data.target_spacing=[X, Y, Z] (the spacing the model was trained at).")
        return list(self.target_spacing)

    # ------------------------------------------------------------------ files and dictionaries
    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-serialisable types (lists, dicts, strings, numbers, None); a deep copy."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "plan", fix: str = _FIX_FILE) -> Plan:
        """The plan of :meth:`to_dict`'s output, checked.

        Args:
            data: the dictionary (e.g. read from ``plan.json`` or a checkpoint's ``hyper_parameters["plan"]``).
            source: where it came from, for error messages (a file name).
            fix: what the user should do about a bad plan (the default: about a bad ``plan.json``).

        Raises:
            ConfigError: not a plan, another version, or a missing, unknown or ill-typed entry (naming ``source``,
                the entry and the value).
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} does not hold a plan (a JSON object), got {type(data).__name__}; "
                              f"{fix}.")
        version = data.get("version")
        if not _is_int(version):
            raise ConfigError(f"{source} has no valid plan version (version={version!r}); {fix}.")
        if version != PLAN_VERSION:
            newer = version > PLAN_VERSION
            raise ConfigError(
                f"{source} is a plan of version {version}, this dragsaw reads version {PLAN_VERSION}; "
                + ("upgrade dragsaw to use this run." if newer else f"{fix}.")
            )
        names = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(data) - names)
        required = ("spatial_dims", "input_size", "num_classes", "in_channels", "normalization")
        missing = [k for k in required if k not in data]
        if unknown or missing:
            what = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                               f"unknown entries {unknown}" if unknown else "") if part)
            raise ConfigError(f"{source} is not a complete version-{PLAN_VERSION} plan ({what}); {fix}.")
        plan = cls(**{k: data[k] for k in names if k in data})
        plan._check(source, fix)
        return plan

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON to ``path`` atomically (a complete file or none; an existing one is replaced).

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        return write_json_atomic(self.to_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by :meth:`save`.

        Raises:
            ConfigError: the file is missing, unreadable, not JSON or not a plan of this version (naming the file,
                the problem and the fix).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: a run written by this dragsaw keeps its plan there, beside "
                              "config.yaml; pass the run directory that holds it, or load the model from its "
                              "checkpoint (dragsaw.engine.load_task), which holds a copy of the plan.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is damaged (not valid JSON: {exc}); {_FIX_FILE}.") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); fix its permissions, or "
                              f"{_FIX_FILE}.") from exc
        return cls.from_dict(data, source=str(path))

    # ------------------------------------------------------------------ checks
    def _check(self, source: str, fix: str) -> None:
        """Types and ranges of every entry (see the class attributes); raises ConfigError naming ``source``."""

        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"{source}: {name}={getattr(self, name)!r} must be {want}; {fix}.")

        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise bad("spatial_dims", "2 or 3")
        if not _int_list(self.input_size, self.spatial_dims):
            raise bad("input_size", f"a list of {self.spatial_dims} ints >= 1")
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise bad("num_classes", "an int >= 1")
        if self.in_channels is not None and (not _is_int(self.in_channels) or self.in_channels < 1):
            raise bad("in_channels", "an int >= 1 or null")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", f"one of {list(NORMALIZATIONS)}")
        for name in ("mean", "std"):
            if getattr(self, name) is not None and not _number_list(getattr(self, name)):
                raise bad(name, "a non-empty list of numbers or null")
        if self.target_spacing is not None and not (
            _number_list(self.target_spacing, self.spatial_dims) and min(self.target_spacing) > 0
        ):
            raise bad("target_spacing", f"a list of {self.spatial_dims} positive numbers or null")
        if self.modalities is not None and not (
            isinstance(self.modalities, list) and self.modalities and all(isinstance(m, str) for m in self.modalities)
        ):
            raise bad("modalities", "a non-empty list of names or null")
        if self.ct_stats is not None and not (
            isinstance(self.ct_stats, dict)
            and all(isinstance(v, dict) and all(_is_number(x) for x in v.values()) for v in self.ct_stats.values())
        ):
            raise bad("ct_stats", "a mapping {channel: {statistic: number}} or null")
        if not (isinstance(self.network, dict) and isinstance(self.network.get("name", ""), str)
                and isinstance(self.network.get("options", {}), dict)):
            raise bad("network", 'a mapping {"name": model name, "options": {...}}')
        if not (isinstance(self.user_set, list) and all(isinstance(k, str) for k in self.user_set)):
            raise bad("user_set", "a list of configuration keys")


def _plain_stats(stats: Mapping) -> dict[str, dict[str, float]]:
    """CT statistics with string channel keys and float values (as JSON and YAML keep them)."""
    return {str(k): {str(n): float(v) for n, v in dict(values).items()} for k, values in dict(stats).items()}


def _list(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_list(value, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(_is_int(v) and v >= 1 for v in value)


def _number_list(value, length: int | None = None) -> bool:
    return (isinstance(value, list) and bool(value) and (length is None or len(value) == length)
            and all(_is_number(v) for v in value))
