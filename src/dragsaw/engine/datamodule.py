"""Lightning data module over the dataset adapters: official splits, seeded carving, ``splits.json``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import RunConfig
from ..data import SegmentationDataset, collate_eval, find_cases, resolve_splits, worker_init_fn
from ..errors import ConfigError

__all__ = ["SegmentationData", "cases_for"]


def cases_for(config: RunConfig, splits_path: Path | None):
    """Find the cases of ``config.data`` and complete them to train/val/test (reusing ``splits_path``)."""
    dc = config.data
    if not dc.root:
        raise ConfigError(
            f"no data root for dataset {dc.dataset!r}: pass --data-root PATH (or set data.root in the preset)."
        )
    options = {"ph2_root": dc.extra_root} if dc.extra_root else {}
    found = find_cases(dc.dataset, dc.root, **options)
    return resolve_splits(
        found, val_fraction=dc.val_fraction, test_fraction=dc.test_fraction, seed=dc.split_seed, path=splits_path
    )


class SegmentationData(L.LightningDataModule):
    """Train/val/test loaders for a run.

    Args:
        config: the resolved run configuration.
        splits_path: where ``splits.json`` is written (or read, on resume).
    """

    def __init__(self, config: RunConfig, splits_path: Path | None) -> None:
        super().__init__()
        self.config = config
        self.splits = cases_for(config, splits_path)
        if not self.splits["train"]:
            raise ConfigError(f"dataset {config.data.dataset!r} at {config.data.root!r} has no training cases.")
        dc = config.data
        common = dict(num_classes=dc.num_classes, input_size=dc.input_size, value_map=dc.value_map,
                      mean=dc.mean, std=dc.std)
        self.train_set = SegmentationDataset(self.splits["train"], train=True, seed=config.train.seed, **common)
        self.eval_sets = {
            name: SegmentationDataset(cases, train=False, **common)
            for name, cases in self.splits.items()
            if name in ("val", "test") and cases
        }
        self.in_channels = self.train_set.channels

    def _loader(self, dataset, train: bool) -> DataLoader:
        tc = self.config.train
        return DataLoader(
            dataset,
            batch_size=tc.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > tc.batch_size,
            num_workers=tc.num_workers,
            persistent_workers=tc.num_workers > 0,
            collate_fn=None if train else collate_eval,
            generator=torch.Generator().manual_seed(tc.seed) if train else None,
            worker_init_fn=worker_init_fn if tc.num_workers > 0 else None,
        )

    def steps_per_epoch(self) -> int:
        n, b = len(self.train_set), self.config.train.batch_size
        return max(1, n // b if n > b else 1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.eval_sets["val"], train=False) if "val" in self.eval_sets else []

    def eval_loader(self, split: str) -> DataLoader:
        """Loader of one evaluation split ("val" or "test")."""
        if split not in self.eval_sets:
            raise ConfigError(f"the run's data has no {split!r} split (it has {sorted(self.eval_sets)}).")
        return self._loader(self.eval_sets[split], train=False)
