"""Dataset adapters: functions that list a dataset's cases in its official on-disk layout, by registry name.

Importing this package registers the built-in adapters (:mod:`~dragsaw.data.adapters.images` for the 2D datasets
of the paper and a generic folder, :mod:`~dragsaw.data.adapters.decathlon` for volumes); add your own with
:func:`register_dataset`.
"""

from __future__ import annotations



from dragsaw.data.adapters.decathlon import dataset_properties, decathlon
from dragsaw.data.adapters.images import digestpath, folder, isic2016, isic2016_ph2, isic2017, montgomery, ph2
from dragsaw.data.adapters.registry import CasesBySplit, DATASETS, available_datasets, find_cases, register_dataset

__all__ = [
    "CasesBySplit", "DATASETS", "available_datasets", "find_cases", "register_dataset", "dataset_properties",
    "decathlon", "digestpath", "folder", "isic2016", "isic2016_ph2", "isic2017", "montgomery", "ph2",
]
