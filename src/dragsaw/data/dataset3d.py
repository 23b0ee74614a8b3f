"""A torch ``Dataset`` of volume cases (random training patches, or whole preprocessed volumes for evaluation), and
the dataset-wide CT intensity statistics its normalisation needs.

Each case is preprocessed once (:func:`dragsaw.data.transforms3d.preprocess_transforms`: RAS, modality
normalisation, resampling to the target spacing) and kept in memory when ``cache=True``; training items are then
drawn from it by :func:`dragsaw.data.transforms3d.train_transforms`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dragsaw.data.cases import Case
from dragsaw.data.dataset2d import stack_eval_items
from dragsaw.data.io2d import map_mask_values
from dragsaw.data.io3d import LoadVolumed, case_to_dict, check_case_geometry
from dragsaw.data.transforms3d import (
    _as_float_tuple,
    _check_modalities,
    _check_patch,
    is_ct,
    preprocess_transforms,
    train_transforms,
)
from dragsaw.errors import ConfigError, DataError

__all__ = ["ct_statistics", "VolumeDataset", "collate_eval3d", "worker_init_fn3d"]


def _modalities(cases: list[Case], modalities: Sequence[str] | None) -> tuple[str, ...]:
    if modalities is not None:
        if isinstance(modalities, (str, bytes)) or not isinstance(modalities, Sequence) or not modalities:
            raise ConfigError(f"modalities must be a non-empty list of channel names, got {modalities!r}")
        return tuple(str(m) for m in modalities)
    found = {tuple(c.extra.get("modalities") or ()) for c in cases}
    if len(found) != 1 or not next(iter(found)):
        raise ConfigError(
            f"modalities=None needs every case to carry the same extra['modalities'], found {sorted(found)}; "
            "fix: pass modalities=[...] (one name per channel)"
        )
    return found.pop()


def ct_statistics(
    cases: Sequence[Case],
    *,
    modalities: Sequence[str] | None = None,
    max_cases: int = 50,
    samples_per_case: int = 10_000,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Dataset-wide CT intensity statistics over foreground voxels (label > 0), as nnU-Net collects them.

    Up to ``max_cases`` cases are read in their own geometry (a seeded choice when there are more); from each,
    up to ``samples_per_case`` foreground voxels are drawn (all of them when there are fewer). The mean, the
    standard deviation (population) and the 0.5th/99.5th percentiles (numpy's linear interpolation) of the pooled
    values are returned per CT channel.

    Args:
        cases: Labelled training cases (never test cases: that would leak).
        modalities: One name per channel; None takes ``case.extra["modalities"]`` (as :func:`decathlon` sets it).
        max_cases: Most cases read.
        samples_per_case: Most foreground voxels kept per case.
        seed: Seed of the case choice and the voxel draws.

    Returns:
        ``{channel index: {"mean", "std", "percentile_00_5", "percentile_99_5"}}`` for every CT channel.

    Raises:
        ConfigError: no cases, no modality names, no CT channel, bad counts.
        DataError: unlabeled cases, unreadable files, or no foreground voxel at all.
    """
    cases = list(cases)
    if not cases:
        raise ConfigError("ct_statistics needs at least one labelled case, got none")
    if modalities is None:
        modalities = cases[0].extra.get("modalities")
        if not modalities:
            raise ConfigError("ct_statistics: pass modalities=[...] (the cases carry no extra['modalities'])")
    names = _check_modalities(modalities)
    ct_channels = [c for c, m in enumerate(names) if is_ct(m)]
    if not ct_channels:
        raise ConfigError(f"ct_statistics: no CT channel among modalities {list(names)}; only CT needs statistics")
    for name, value in (("max_cases", max_cases), ("samples_per_case", samples_per_case)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(int(seed))
    if len(cases) > max_cases:
        cases = [cases[i] for i in sorted(rng.choice(len(cases), size=max_cases, replace=False))]
    load = LoadVolumed()
    pooled: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    for case in cases:
        if case.mask is None:
            raise DataError(f"case {case.case_id!r} ({case.image}) has no label; ct_statistics needs labelled cases")
        d = load(case_to_dict(case))
        image = d["image"].as_tensor().numpy()
        if image.shape[0] != len(names):
            raise DataError(
                f"image {case.image} has {image.shape[0]} channel(s) but modalities are {list(names)}; "
                "fix: give one modality name per channel"
            )
        fg = d["label"].as_tensor().numpy()[0] > 0
        take = None
        n_fg = int(fg.sum())
        if n_fg > samples_per_case:
            take = rng.choice(n_fg, size=samples_per_case, replace=False)
        for c in ct_channels:
            values = image[c][fg].astype(np.float64)
            pooled[c].append(values if take is None else values[take])
    out: dict[int, dict[str, float]] = {}
    for c in ct_channels:
        values = np.concatenate(pooled[c])
        if values.size == 0:
            raise DataError(
                f"ct_statistics: the {len(cases)} case(s) read have no foreground voxel (label > 0); "
                "fix: check the labels or pass labelled cases"
            )
        lo, hi = np.percentile(values, [0.5, 99.5])
        out[c] = {"mean": float(values.mean()), "std": float(values.std()),
                  "percentile_00_5": float(lo), "percentile_99_5": float(hi)}  # fmt: skip
    return out


class VolumeDataset(Dataset):
    """3D images and label maps of a list of cases, preprocessed to one spacing.

    Training items (``train=True``): ``{"image": float32 [C, *P], "label": int64 [*P], "case_id": str}``, one
    random augmented patch of ``patch_size`` per call (a third centred on foreground by default).

    Evaluation items (``train=False``): the whole preprocessed volume ``{"image": float32 [C, X, Y, Z], "label":
    int64 [X, Y, Z]`` (preprocessed space), ``"label_native"``: int64 ``[X0, Y0, Z0]`` in the file's own geometry
    (metrics belong there), ``"case_id"``, ``"meta"``: ``{"affine": np.ndarray 4x4 (the file's), "shape": (X0, Y0,
    Z0), "path": str, "affine_preprocessed", "shape_preprocessed", "spacing"}``}``. Map predictions back with
    :func:`dragsaw.data.io3d.to_original_geometry` and write them with :func:`dragsaw.data.io3d.write_nifti`.

    A case without a mask is a negative case (all background), as for :class:`~dragsaw.data.cases.Case`.

    With ``cache=True`` the preprocessed image (float16: relative rounding <= 2**-11, half the memory) and labels
    (uint8) are kept in memory after the first read; each DataLoader worker fills its own copy, so use
    ``num_workers=0`` or ``persistent_workers=True`` for the cache to last. Pass :func:`worker_init_fn3d` to the
    DataLoader so that workers draw different patches.

    Args:
        cases: The cases (e.g. one split of :func:`dragsaw.data.splits.resolve_splits` over :func:`decathlon`).
        num_classes: K, background included; checked against label values and ``extra["labels"]``.
        target_spacing: Spacing in mm along the RAS axes (``dataset_properties(...)["target_spacing"]``).
        modalities: One name per channel (``"CT"`` or anything else), or None to take ``extra["modalities"]``.
        patch_size: Training patch size ``(X, Y, Z)`` (stored as ``self.patch_size`` for sliding windows).
        train: Training (patches) or evaluation (whole volumes) mode.
        ct_stats: CT statistics (:func:`ct_statistics`) when a channel is CT.
        cache: Keep preprocessed volumes in memory.
        seed: Seed of the training pipeline's random state (None: MONAI's default).
        value_map: Optional {stored label value: class index}.
        intensity: nnU-Net's full set of intensity augmentations in training (see
            :func:`dragsaw.data.transforms3d.train_transforms`).

    Raises:
        ConfigError: empty ``cases``, bad options, or ``num_classes`` disagreeing with the cases' label names.
        DataError: unreadable headers, channel counts other than ``len(modalities)``, label/image shape mismatches
            (checked from the headers when the dataset is built).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        num_classes: int,
        target_spacing: Sequence[float],
        modalities: Sequence[str] | None,
        patch_size: Sequence[int],
        train: bool,
        ct_stats: Mapping | None = None,
        cache: bool = True,
        seed: int | None = None,
        value_map: Mapping[int, int] | None = None,
        intensity: bool = False,
    ) -> None:
        self.cases = list(cases)
        if not self.cases or not all(isinstance(c, Case) for c in self.cases):
            raise ConfigError(f"cases must be a non-empty sequence of Case objects, got {len(self.cases)} item(s)")
        map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)  # validates num_classes and value_map
        for case in self.cases:
            names = case.extra.get("labels")
            if names and value_map is None and len(names) != num_classes:
                raise ConfigError(
                    f"num_classes={num_classes} but case {case.case_id!r} declares {len(names)} labels {list(names)}; "
                    f"fix: set num_classes={len(names)}"
                )
        self.num_classes = int(num_classes)
        self.modalities = _modalities(self.cases, modalities)
        self.target_spacing = _as_float_tuple("target_spacing", target_spacing)
        self.patch_size = _check_patch(patch_size)
        self.train = bool(train)
        self.cache = bool(cache)
        self._preprocess = preprocess_transforms(
            self.target_spacing, self.modalities, ct_stats, num_classes=self.num_classes, value_map=value_map,
            keep_native=not self.train,
        )  # fmt: skip
        self.transform = train_transforms(self.patch_size, seed=seed, intensity=intensity) if self.train else None
        for case in self.cases:
            check_case_geometry(case, channels=len(self.modalities))
        self.channels = len(self.modalities)
        self._cached: dict[int, dict[str, Any]] = {}

    def reseed(self, seed: int) -> None:
        """Reset the random state of the training pipeline (no effect in evaluation mode)."""
        if self.transform is not None:
            self.transform.set_random_state(seed=int(seed) % (2**32))

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> dict[str, Any]:
        """Preprocessed image, label (and native label + meta in evaluation mode), in their cached dtypes."""
        if index in self._cached:
            return self._cached[index]
        case = self.cases[index]
        out = self._preprocess(case_to_dict(case))
        if "label" not in out:  # a negative case: all background
            out["label"] = torch.zeros(out["image"].shape[1:], dtype=torch.int64)
            if not self.train:
                out["label_native"] = torch.zeros(out["meta"]["shape"], dtype=torch.int64)
        entry = {"image": out["image"], "label": out["label"], "meta": out["meta"]}
        if not self.train:
            entry["label_native"] = out["label_native"]
        if self.cache:
            label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
            entry["image"] = entry["image"].to(torch.float16)
            for key in ("label", "label_native"):
                if key in entry:
                    entry[key] = entry[key].to(label_dtype)
            self._cached[index] = entry
        return entry

    def __getitem__(self, index: int) -> dict:
        """One case as a dictionary (see the class docstring).

        Shape:
            training: ``"image"`` ``[C, *P]``, ``"label"`` ``[*P]``; evaluation: ``"image"`` ``[C, X, Y, Z]``,
            ``"label"`` ``[X, Y, Z]``, ``"label_native"`` ``[X0, Y0, Z0]``.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} cases")
        index = index % len(self)
        entry = self._load(index)
        image = entry["image"].to(torch.float32, copy=True)
        label = entry["label"].to(torch.int64, copy=True)
        case_id = self.cases[index].case_id
        if self.train:
            out = self.transform(  # type: ignore[misc]
                {"image": image, "label": label})
            return {"image": out["image"], "label": out["label"], "case_id": case_id}
        meta = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in entry["meta"].items()}
        return {"image": image, "label": label, "label_native": entry["label_native"].to(torch.int64, copy=True),
                "case_id": case_id, "meta": meta}  # fmt: skip


def collate_eval3d(batch: Sequence[dict]) -> dict:
    """Collate evaluation items of :class:`VolumeDataset`: stack volumes, keep native labels and metas as lists.

    Args:
        batch: Evaluation items; volumes of different preprocessed shapes need ``batch_size=1``.

    Returns:
        ``{"image": [B, C, X, Y, Z], "label": [B, X, Y, Z], "label_native": [tensor] * B, "case_id": [str] * B,
        "meta": [dict] * B}``.

    Raises:
        ConfigError: an empty batch, or volumes of different shapes.
    """
    if not batch:
        raise ConfigError("collate_eval3d received an empty batch")
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        raise ConfigError(
            f"collate_eval3d cannot stack volumes of shapes {sorted(shapes)}; fix: use batch_size=1 for evaluation"
        )
    return stack_eval_items(batch, ("label_native", "meta"))


def worker_init_fn3d(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` for :class:`VolumeDataset`: a per-worker seed (``base_seed + worker_id``)."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, VolumeDataset):
        info.dataset.reseed(info.seed)
