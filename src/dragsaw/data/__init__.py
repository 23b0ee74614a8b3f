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
from dragsaw.data.splits import cross_validation_splits, nested_subset, resolve_splits
from dragsaw.data.synthetic import generate, write_folder
from dragsaw.data.transforms2d import NormalizeImage, eval_transforms, resize_transforms, train_transforms
from dragsaw.data.decathlon import dataset_properties, decathlon
from dragsaw.data.decathlon import register as _register_decathlon
from dragsaw.data.dataset3d import VolumeDataset, collate_eval3d, ct_statistics, worker_init_fn3d
from dragsaw.data.io3d import LoadVolumed, case_to_dict, read_header, to_original_geometry, write_nifti
from dragsaw.data.synthetic3d import generate3d, write_decathlon
from dragsaw.data.transforms3d import NormalizeModalities, preprocess_transforms
from dragsaw.data.transforms3d import train_transforms as train_transforms3d

_register_decathlon(DATASETS)  # find_cases("decathlon", root)

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
    "nested_subset",
    "resolve_splits",
    "cross_validation_splits",
    "train_transforms",
    "eval_transforms",
    "resize_transforms",
    "NormalizeImage",
    "SegmentationDataset",
    "collate_eval",
    "worker_init_fn",
    "generate",
    "write_folder",
    "decathlon",
    "dataset_properties",
    "read_header",
    "case_to_dict",
    "LoadVolumed",
    "to_original_geometry",
    "write_nifti",
    "NormalizeModalities",
    "ct_statistics",
    "preprocess_transforms",
    "train_transforms3d",
    "VolumeDataset",
    "collate_eval3d",
    "worker_init_fn3d",
    "generate3d",
    "write_decathlon",
]
