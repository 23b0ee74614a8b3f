"""Lightning data module over the dataset adapters: official splits, seeded carving, ``splits.json``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import RunConfig
from ..data import SegmentationDataset, collate_eval, find_cases, nested_subset, resolve_splits, worker_init_fn
from ..data.verify import verify_cases
from ..errors import ConfigError, DataError

__all__ = ["EpochSampler", "SegmentationData", "all_as_test", "cases_for", "preflight", "training_subset"]


def preflight(found: dict, config: RunConfig) -> None:
    """The quick dataset check before training or evaluation: errors stop here, with every bad file named."""
    report = verify_cases(found, num_classes=config.data.num_classes, value_map=config.data.value_map, quick=True)
    errors = report.of_level("error")
    if errors:
        lines = "; ".join(p.line() for p in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise DataError(
            f"the dataset at {config.data.root} failed the quick check with {len(errors)} error(s): {lines}{more}. "
            f"Run `dragsaw verify --preset {config.name} --data-root {config.data.root}` for the full report."
        )


def all_as_test(found: dict) -> dict:
    """Every case of a dataset as the test split (evaluating a trained model on another dataset)."""
    return {"train": [], "val": [], "test": [c for split in found.values() for c in split]}


def training_subset(splits: dict, config: RunConfig) -> dict:
    """``splits`` with the training cases cut to ``data.train_fraction`` (seeded by ``data.subset_seed``, else
    ``train.seed``; nested across fractions, see :func:`dragsaw.data.nested_subset`). Validation and test cases are
    never cut, so runs at different fractions are scored on the same cases."""
    dc = config.data
    if dc.train_fraction >= 1.0 or not splits.get("train"):
        return splits
    seed = config.train.seed if dc.subset_seed is None else dc.subset_seed
    return {**splits, "train": nested_subset(splits["train"], dc.train_fraction, seed)}


def cases_for(config: RunConfig, splits_path: Path | None, *, verify: bool = True, evaluate_only: bool = False):
    """Find the cases of ``config.data`` (quick-checked) and complete them to train/val/test (reusing
    ``splits_path``); with ``evaluate_only`` every case is a test case."""
    dc = config.data
    if not dc.root:
        raise ConfigError(
            f"no data root for dataset {dc.dataset!r}: pass --data-root PATH (or set data.root in the preset)."
        )
    options = {"ph2_root": dc.extra_root} if dc.extra_root else {}
    found = find_cases(dc.dataset, dc.root, **options)
    if verify:
        preflight(found, config)
    if evaluate_only:
        return all_as_test(found)
    return training_subset(resolve_splits(
        found, val_fraction=dc.val_fraction, test_fraction=dc.test_fraction, seed=dc.split_seed, path=splits_path
    ), config)


class EpochSampler(Sampler[int]):
    """Shuffling whose order and augmentation seeds depend only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every training epoch. The permutation, the augmentation random state
    of the dataset (in-process loading) and the DataLoader's generator (from which worker seeds are drawn) are all
    re-derived from the seed and the epoch, so a run resumed at an epoch boundary sees exactly the batches an
    uninterrupted run would.
    """

    def __init__(self, dataset, seed: int, generator: torch.Generator, num_samples: int | None = None) -> None:
        self.dataset, self.seed, self.generator = dataset, int(seed), generator
        self.num_samples = len(dataset) if num_samples is None else int(num_samples)
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(self.seed * 7_919 + self.epoch)

    def __iter__(self):
        """Whole permutations of the dataset, concatenated and cut to ``num_samples`` (every case once per pass)."""
        order = torch.Generator().manual_seed(self.seed * 15_485_863 + self.epoch)
        n = len(self.dataset)
        passes = -(-self.num_samples // n)
        indices = torch.cat([torch.randperm(n, generator=order) for _ in range(passes)])[: self.num_samples]
        return iter(indices.tolist())

    def __len__(self) -> int:
        return self.num_samples


class SegmentationData(L.LightningDataModule):
    """Train/val/test loaders for a run.

    Args:
        config: the resolved run configuration.
        splits_path: where ``splits.json`` is written (or read, on resume).
    """

    def __init__(self, config: RunConfig, splits_path: Path | None, *, evaluate_only: bool = False) -> None:
        super().__init__()
        self.config = config
        self.splits = cases_for(config, splits_path, evaluate_only=evaluate_only)
        if not self.splits["train"] and not evaluate_only:
            raise ConfigError(f"dataset {config.data.dataset!r} at {config.data.root!r} has no training cases.")
        dc = config.data
        common = dict(num_classes=dc.num_classes, input_size=dc.input_size, value_map=dc.value_map,
                      mean=dc.mean, std=dc.std)
        self.train_set = (
            None if evaluate_only
            else SegmentationDataset(self.splits["train"], train=True, seed=config.train.seed, **common)
        )
        self.eval_sets = {
            name: SegmentationDataset(cases, train=False, **common)
            for name, cases in self.splits.items()
            if name in ("val", "test") and cases
        }
        self.in_channels = (self.train_set or next(iter(self.eval_sets.values()))).channels

    def _loader(self, dataset, train: bool) -> DataLoader:
        tc = self.config.train
        generator = torch.Generator()
        return DataLoader(
            dataset,
            batch_size=tc.batch_size,
            sampler=EpochSampler(dataset, tc.seed, generator, self._samples_per_epoch()) if train else None,
            drop_last=train and (tc.iterations_per_epoch is not None or len(dataset) > tc.batch_size),
            num_workers=tc.num_workers,
            collate_fn=None if train else collate_eval,
            generator=generator if train else None,
            worker_init_fn=worker_init_fn if tc.num_workers > 0 else None,
        )

    def _samples_per_epoch(self) -> int | None:
        iterations = self.config.train.iterations_per_epoch
        return None if iterations is None else iterations * self.config.train.batch_size

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ``train.iterations_per_epoch`` when set (the same budget whatever the number of
        training cases, e.g. for ``data.train_fraction`` experiments), else one pass over the training cases."""
        if self.config.train.iterations_per_epoch is not None:
            return self.config.train.iterations_per_epoch
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
