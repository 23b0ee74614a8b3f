"""Data layer: finding cases on disk, reading images and masks, splits, transforms, datasets and synthetic data.

Typical use::

    from dragsaw.data import find_cases, resolve_splits, SegmentationDataset

    splits = resolve_splits(find_cases("isic2016", "/data/ISIC2016"), seed=0, path="run/splits.json")
    train = SegmentationDataset(splits["train"], input_size=(512, 512), train=True)
"""

from __future__ import annotations

from dragsaw.data.cases import Case
from dragsaw.data.dataset2d import SegmentationDataset, collate_eval, worker_init_fn
from dragsaw.data.datasets2d import (
    DATASETS,
    digestpath,
    find_cases,
    folder,
    isic2016,
    isic2016_ph2,
    isic2017,
    montgomery,
    ph2,
)
from dragsaw.data.io2d import check_same_size, image_channels, map_mask_values, read_case, read_image, read_mask
from dragsaw.data.splits import resolve_splits
from dragsaw.data.synthetic import generate, write_folder
from dragsaw.data.transforms2d import NormalizeImage, eval_transforms, resize_transforms, train_transforms

__all__ = [
    "Case",
    "DATASETS",
    "find_cases",
    "isic2016",
    "isic2017",
    "ph2",
    "isic2016_ph2",
    "montgomery",
    "digestpath",
    "folder",
    "read_image",
    "read_mask",
    "read_case",
    "image_channels",
    "map_mask_values",
    "check_same_size",
    "resolve_splits",
    "train_transforms",
    "eval_transforms",
    "resize_transforms",
    "NormalizeImage",
    "SegmentationDataset",
    "collate_eval",
    "worker_init_fn",
    "generate",
    "write_folder",
]
