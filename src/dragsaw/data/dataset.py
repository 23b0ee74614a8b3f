"""One torch ``Dataset`` of segmentation cases for any ``spatial_dims``, with in-memory caching and native-geometry
labels for evaluation.

Each item is read by a :class:`~dragsaw.data.readers.CaseReader` (2D: decode and resize; 3D: reorient, normalise,
resample), cached when ``cache=True``, then passed through the reader's training or evaluation transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dragsaw.data.cases import Case
from dragsaw.data.readers import CaseReader
from dragsaw.errors import ConfigError

__all__ = ["SegmentationDataset", "collate_eval", "worker_init_fn"]


class SegmentationDataset(Dataset):
    """Images (2D) or volumes (3D) and their label maps, read by ``reader``.

    Training items (``train=True``): ``{"image": float32 [C, *P], "label": int64 [*P], "case_id": str}`` after the
    reader's augmentation (2D: the whole resized image; 3D: one random patch per call).

    Evaluation items (``train=False``): the whole case in network space, ``{"image": float32 [C, *S], "label":
    int64 [*S], "label_native": int64 [*S0] (the file's own geometry: metrics belong there), "case_id": str,
    "meta": dict}`` (``meta["shape"] == S0``; see the reader for its other keys).

    With ``cache=True`` the read image (as float16: relative rounding <= 2**-11, half the memory) and labels (as
    uint8 up to 256 classes) are kept in memory after the first read; each DataLoader worker fills its own copy, so
    the cache lasts across epochs only with ``num_workers=0`` or ``persistent_workers=True``. Pass
    :func:`worker_init_fn` to the DataLoader so that workers draw different augmentations.

    Args:
        cases: The cases (e.g. one split of :func:`dragsaw.data.splits.resolve_splits`).
        reader: :class:`~dragsaw.data.readers.ImageReader` or :class:`~dragsaw.data.readers.VolumeReader`.
        train: Training mode (random augmentation) or evaluation mode (whole cases, native labels).
        seed: Seed of the training transform's random state (None: MONAI's default).
        intensity: nnU-Net's intensity augmentations in training.
        cache: Keep read arrays in memory.
        transform: Replaces the reader's transform; it receives ``{"image": float32 [C, *S], "label": int64 [*S]}``
            and must return the same keys.

    Raises:
        ConfigError: empty ``cases`` or items that are not :class:`~dragsaw.data.cases.Case`.
        DataError: unreadable headers or inconsistent channel counts (checked when the dataset is built).
    """

    def __init__(self, cases: Sequence[Case], reader: CaseReader, *, train: bool, seed: int | None = None,
                 intensity: bool = False, cache: bool = True, transform: Callable[[dict], dict] | None = None) -> None:
        self.cases = list(cases)
        if not self.cases or not all(isinstance(c, Case) for c in self.cases):
            raise ConfigError(f"cases must be a non-empty sequence of Case objects, got {len(self.cases)} item(s)")
        if not isinstance(reader, CaseReader):
            raise ConfigError(f"reader must be an ImageReader or a VolumeReader, got {type(reader).__name__}")
        self.reader = reader
        self.train = bool(train)
        self.cache = bool(cache)
        self.channels = reader.check(self.cases)
        self.transform = transform if transform is not None else reader.transform(train=self.train, seed=seed,
                                                                                   intensity=intensity)
        self._cached: dict[int, dict[str, Any]] = {}

    @property
    def input_size(self) -> tuple[int, ...]:
        """The network input size of the reader (2D: the resized image; 3D: the patch)."""
        return self.reader.input_size

    def reseed(self, seed: int) -> None:
        """Reset the random state of the transform (when it supports ``set_random_state``, as MONAI's do)."""
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(seed) % (2**32))

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> dict[str, Any]:
        if index in self._cached:
            return self._cached[index]
        entry = self.reader.read(self.cases[index], native=not self.train)
        if self.cache:
            label_dtype = torch.uint8 if self.reader.num_classes <= 256 else torch.int32
            entry["image"] = entry["image"].to(torch.float16)
            for key in ("label", "label_native"):
                if key in entry:
                    entry[key] = entry[key].to(label_dtype)
            self._cached[index] = entry
        return entry

    def __getitem__(self, index: int) -> dict:
        """One case as a dictionary (see the class docstring).

        Shape:
            training: ``"image"`` ``[C, *P]``, ``"label"`` ``[*P]``; evaluation: ``"image"`` ``[C, *S]``,
            ``"label"`` ``[*S]``, ``"label_native"`` ``[*S0]``.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} cases")
        index = index % len(self)
        entry = self._load(index)
        data = {"image": entry["image"].to(torch.float32, copy=True),
                "label": entry["label"].to(torch.int64, copy=True)}
        out = self.transform(data) if self.transform is not None else data
        item = {"image": out["image"], "label": out["label"], "case_id": self.cases[index].case_id}
        if not self.train:
            item["label_native"] = entry["label_native"].to(torch.int64, copy=True)
            item["meta"] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in entry["meta"].items()}
        return item


def collate_eval(batch: Sequence[dict]) -> dict:
    """Collate evaluation items: stack images and labels; case ids, native labels and metas stay lists.

    Args:
        batch: Evaluation items of :class:`SegmentationDataset` of one shape (volumes of different shapes need
            ``batch_size=1``).

    Returns:
        ``{"image": [B, C, *S], "label": [B, *S], "case_id": [str] * B, "label_native": [tensor [*S0_b]] * B,
        "meta": [dict] * B}`` (a key absent from the items is left out).

    Raises:
        ConfigError: an empty batch, or items of different shapes.
    """
    if not batch:
        raise ConfigError("collate_eval received an empty batch")
    shapes = {tuple(b["image"].shape) for b in batch}
    if len(shapes) > 1:
        raise ConfigError(
            f"collate_eval cannot stack items of shapes {sorted(shapes)}", fix="use batch_size=1 for evaluation"
        )
    out = {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch]),
           "case_id": [b["case_id"] for b in batch]}
    for key in ("label_native", "meta"):
        if key in batch[0]:
            out[key] = [b[key] for b in batch]
    return out


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation its own seed, derived from torch's seed.

    Without it every worker starts from a copy of the same random state and repeats the same augmentations. The
    per-worker seed comes from the DataLoader (``base_seed + worker_id``), so a seeded run stays reproducible.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, SegmentationDataset):
        info.dataset.reseed(info.seed)
