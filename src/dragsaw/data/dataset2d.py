"""A torch ``Dataset`` of 2D segmentation cases, with in-memory caching and native-resolution labels for evaluation.

Each item is decoded (:func:`dragsaw.data.io2d.read_case`), resized to ``input_size`` (deterministic, cached when
``cache=True``), then passed through the training or evaluation transforms (:mod:`dragsaw.data.transforms2d`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dragsaw.data.cases import Case
from dragsaw.data.io2d import image_channels, map_mask_values, read_case
from dragsaw.data.intensity import intensity_shift, parse_shift
from dragsaw.data.transforms2d import eval_transforms, resize_transforms, train_transforms
from dragsaw.errors import ConfigError, DataError

__all__ = ["SegmentationDataset", "collate_eval", "worker_init_fn"]


class SegmentationDataset(Dataset):
    """2D images and masks of a list of cases, resized to one input size.

    Items are dictionaries:

    * ``"image"``: float32 ``[C, H, W]``, normalised (``H, W = input_size``);
    * ``"label"``: int64 ``[H, W]`` class indices ``0..K-1``;
    * ``"case_id"``: str;
    * evaluation mode only: ``"label_native"``: int64 ``[H0, W0]`` at the mask's original resolution (metrics are
      computed there), and ``"image_native_size"``: ``(H0, W0)``.

    With ``cache=True`` the resized image (as float16: relative rounding <= 2**-11, half the memory) and labels
    (as uint8) are kept in memory after the first read. Each DataLoader worker fills its own copy, so the cache
    lasts across epochs only with ``num_workers=0`` or ``persistent_workers=True``. Pass
    :func:`worker_init_fn` to the DataLoader so that workers draw different augmentations.

    Args:
        cases: The cases (e.g. one split of :func:`dragsaw.data.splits.resolve_splits`).
        num_classes: K, background included.
        input_size: Network input size ``(H, W)`` (configs in the paper's style give (W, H): swap them).
        train: Training mode (random augmentation) or evaluation mode (resize + normalise, native labels).
        value_map: Optional {stored mask value: class index} passed to :func:`dragsaw.data.io2d.read_mask`.
        cache: Keep decoded, resized arrays in memory.
        transform: Replaces the default pipeline; it receives the resized tensors
            ``{"image": float32 [C, H, W], "label": int64 [H, W]}`` and must return the same keys.
        mean: Normalisation mean of the default pipeline (None: ImageNet for RGB, 0.5 for grayscale).
        std: Normalisation std of the default pipeline (None: ImageNet for RGB, 0.25 for grayscale).
        seed: Seed of the default training pipeline's random state (None: MONAI's default).
        normalization: ``"fixed"`` (``mean``/``std``) or ``"zscore"`` (per image and channel) in the default
            pipelines (:func:`dragsaw.data.intensity.normalizer`).
        intensity: add nnU-Net's intensity augmentations to the default training pipeline.
        image_shift: a controlled intensity shift applied to every image as read, before anything else (e.g.
            ``"gamma-0.5"``; :func:`dragsaw.data.intensity.intensity_shift`): robustness evaluation.

    Raises:
        ConfigError: empty ``cases``, bad ``num_classes`` or ``input_size``.
        DataError: unreadable images or images whose channel count differs from the rest (checked from the file
            headers when the dataset is built).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        num_classes: int = 2,
        input_size: Sequence[int],
        train: bool,
        value_map: Mapping[int, int] | None = None,
        cache: bool = True,
        transform: Callable[[dict], dict] | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        seed: int | None = None,
        normalization: str = "fixed",
        intensity: bool = False,
        image_shift: str | None = None,
    ) -> None:
        self.cases = list(cases)
        if image_shift is not None:
            parse_shift(image_shift)  # a bad name stops here, before any file is read
        self.image_shift = image_shift
        if not self.cases or not all(isinstance(c, Case) for c in self.cases):
            raise ConfigError(f"cases must be a non-empty sequence of Case objects, got {len(self.cases)} item(s)")
        map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)  # validates num_classes and value_map
        self.num_classes = num_classes
        self.value_map = value_map
        self.train = bool(train)
        self.cache = bool(cache)
        self._resize = resize_transforms(input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if transform is None:
            transform = (
                train_transforms(self.input_size, mean=mean, std=std, seed=seed, normalization=normalization,
                                 intensity=intensity)
                if self.train
                else eval_transforms(self.input_size, mean=mean, std=std, normalization=normalization)
            )
        self.transform = transform
        self.channels = self._check_channels()
        self._cached: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _check_channels(self) -> int:
        counts = [image_channels(c.image) for c in self.cases]
        common = Counter(counts).most_common(1)[0][0]
        odd = [f"{c.image} ({n} channel(s))" for c, n in zip(self.cases, counts) if n != common]
        if odd:
            raise DataError(
                f"{len(odd)} image(s) differ from the dataset's {common}-channel images: {', '.join(odd[:10])}"
                f"{' ...' if len(odd) > 10 else ''}; fix: convert them (e.g. grayscale -> RGB) so all images have "
                f"{common} channel(s)"
            )
        return common

    def reseed(self, seed: int) -> None:
        """Reset the random state of the transform (when it supports ``set_random_state``, as MONAI's do)."""
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=int(seed) % (2**32))

    def __len__(self) -> int:
        return len(self.cases)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resized image float ``[C, H, W]``, resized label ``[H, W]``, native label ``[H0, W0]``."""
        if index in self._cached:
            return self._cached[index]
        image, mask = read_case(self.cases[index], self.num_classes, self.value_map)
        if self.image_shift is not None:
            image = intensity_shift(torch.from_numpy(np.ascontiguousarray(image)), self.image_shift).numpy()
        resized = self._resize({"image": image, "label": mask})
        native = torch.from_numpy(mask)
        if not self.cache:
            return resized["image"], resized["label"], native
        label_dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        entry = (resized["image"].to(torch.float16), resized["label"].to(label_dtype), native.to(label_dtype))
        self._cached[index] = entry
        return entry

    def __getitem__(self, index: int) -> dict:
        """One case as a dictionary (see the class docstring).

        Shape:
            ``"image"`` ``[C, H, W]``, ``"label"`` ``[H, W]``, ``"label_native"`` ``[H0, W0]``.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} cases")
        index = index % len(self)
        image, label, native = self._load(index)
        out = self.transform({"image": image.to(torch.float32), "label": label.to(torch.int64)})
        item = {"image": out["image"], "label": out["label"], "case_id": self.cases[index].case_id}
        if not self.train:
            item["label_native"] = native.to(torch.int64, copy=True)
            item["image_native_size"] = tuple(native.shape)
        return item


def collate_eval(batch: Sequence[dict]) -> dict:
    """Collate evaluation items: stack images and labels, keep native labels and sizes as lists.

    Args:
        batch: Items of :class:`SegmentationDataset` in evaluation mode (same ``input_size``).

    Returns:
        ``{"image": [B, C, H, W], "label": [B, H, W], "case_id": [str] * B, "label_native": [[H0_b, W0_b]] * B,
        "image_native_size": [(H0_b, W0_b)] * B}``.
    """
    if not batch:
        raise ConfigError("collate_eval received an empty batch")
    return stack_eval_items(batch, ("label_native", "image_native_size"))


def stack_eval_items(batch: Sequence[dict], listed: Sequence[str]) -> dict:
    """Stack ``image`` and ``label`` of evaluation items; ``case_id`` and the ``listed`` keys stay lists.

    Shared by the 2D and 3D evaluation collates (a ``listed`` key absent from the items is left out).
    """
    out = {
        "image": torch.stack([b["image"] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "case_id": [b["case_id"] for b in batch],
    }
    for key in listed:
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
