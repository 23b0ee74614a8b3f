"""Data layer: finding cases on disk, reading images and masks, splits, transforms, datasets and synthetic data.

Typical use::

    from dragsaw.data import ImageReader, SegmentationDataset, find_cases, resolve_splits

    splits = resolve_splits(find_cases("isic2016", "/data/ISIC2016"), seed=0, path="run/splits.json")
    train = SegmentationDataset(splits["train"], ImageReader((512, 512)), train=True)
"""

from __future__ import annotations

from dragsaw.data.adapters import (
    DATASETS,
    available_datasets,
    dataset_properties,
    decathlon,
    digestpath,
    find_cases,
    folder,
    isic2016,
    isic2016_ph2,
    isic2017,
    montgomery,
    ph2,
    register_dataset,
)
from dragsaw.data.cases import Case
from dragsaw.data.dataset import SegmentationDataset, collate_eval, worker_init_fn
from dragsaw.data.io.geometry import to_original_geometry, write_nifti
from dragsaw.data.io.images import check_same_size, image_channels, read_case, read_image, read_mask
from dragsaw.data.io.labels import map_mask_values
from dragsaw.data.io.volumes import LoadVolumed, case_to_dict, read_header
from dragsaw.data.readers import CaseReader, ImageReader, VolumeReader
from dragsaw.data.splits import cross_validation_splits, nested_subset, resolve_splits
from dragsaw.data.statistics import ct_statistics
from dragsaw.data.synthetic.images import generate, write_folder
from dragsaw.data.synthetic.volumes import generate3d, write_decathlon
from dragsaw.data.transforms.images import NormalizeImage, eval_transforms, resize_transforms, train_transforms
from dragsaw.data.transforms.volumes import NormalizeModalities, preprocess_transforms
from dragsaw.data.transforms.volumes import train_transforms as train_transforms3d

__all__ = [
    "Case",
    "DATASETS",
    "available_datasets",
    "find_cases",
    "register_dataset",
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
    "CaseReader",
    "ImageReader",
    "VolumeReader",
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
    "generate3d",
    "write_decathlon",
]
