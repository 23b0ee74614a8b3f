"""Lightning data module over the dataset adapters, for images and volumes: official splits, seeded carving or
cross-validation folds, ``splits.json``, the run's plan, seeded epoch sampling shared out between processes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import RunConfig
from ..data import SegmentationDataset, collate_eval, find_cases, nested_subset, worker_init_fn
from ..data import cross_validation_splits, resolve_splits
from ..data.verify import verify_cases
from ..errors import ConfigError, DataError
from ..plan import Plan
from .distributed import ShardSampler, per_rank_steps, rank_and_world, shard

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
    """Find the cases of ``config.data`` (quick-checked) and complete them to train/val/test, reusing
    ``splits_path``: a cross-validation fold when ``data.fold`` is set, else the dataset's official splits with the
    missing ones carved by a seed; then cut to ``data.train_fraction``. With ``evaluate_only`` every case is a test
    case."""
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
    if dc.fold is not None:
        splits = cross_validation_splits(found, folds=dc.folds, fold=dc.fold, seed=dc.split_seed, path=splits_path)
    else:
        splits = resolve_splits(found, val_fraction=dc.val_fraction, test_fraction=dc.test_fraction,
                                seed=dc.split_seed, path=splits_path)
    return training_subset(splits, config)


class EpochSampler(Sampler[int]):
    """Shuffling whose order and augmentation seeds depend only on ``(seed, epoch)`` (and the rank).

    Lightning calls :meth:`set_epoch` before every training epoch. The permutation, the augmentation random state
    of the dataset (in-process loading) and the DataLoader's generator (from which worker seeds are drawn) are all
    re-derived from the seed and the epoch, so a run resumed at an epoch boundary sees exactly the batches an
    uninterrupted run would. With ``world > 1`` every rank draws the same global order of ``num_samples`` indices
    and takes every ``world``-th from ``rank`` (:func:`dragsaw.engine.distributed.shard`); rank 0 of any world
    keeps the augmentation stream of a single process, the others get their own.
    """

    def __init__(self, dataset, seed: int, generator: torch.Generator, num_samples: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.dataset, self.seed, self.generator = dataset, int(seed), generator
        self.rank, self.world = int(rank), int(world)
        self.global_samples = len(dataset) if num_samples is None else int(num_samples)
        self.num_samples = self.global_samples // self.world
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch + 7_777_777 * self.rank)
        if hasattr(self.dataset, "reseed"):
            self.dataset.reseed(self.seed * 7_919 + self.epoch + 104_729 * self.rank)

    def global_order(self) -> list[int]:
        """The epoch's indices before sharding: whole permutations of the dataset, concatenated and cut to
        ``num_samples`` (every case once per pass), the same on every rank."""
        order = torch.Generator().manual_seed(self.seed * 15_485_863 + self.epoch)
        n = len(self.dataset)
        passes = -(-self.global_samples // n)
        return torch.cat([torch.randperm(n, generator=order) for _ in range(passes)])[: self.global_samples].tolist()

    def __iter__(self):
        order = self.global_order()
        return iter(shard(order[: self.num_samples * self.world], self.rank, self.world))

    def __len__(self) -> int:
        return self.num_samples


class SegmentationData(L.LightningDataModule):
    """Train/val/test loaders of a run, for images and volumes alike.

    The data is read as the run's :class:`dragsaw.plan.Plan` says (:meth:`~dragsaw.plan.Plan.reader`: input size and
    normalisation of images; target spacing, modalities and CT statistics of volumes). Without a ``plan`` one is
    computed from the training cases (:meth:`dragsaw.plan.Plan.from_data`); ``config`` is never changed, so
    ``config.yaml`` stays as the user wrote it.

    Args:
        config: the resolved run configuration.
        splits_path: where ``splits.json`` is written (or read, on resume).
        evaluate_only: every case is a test case (another dataset; pass the model's ``plan``).
        image_shift: a controlled intensity shift of the evaluation images (2D; see
            :func:`dragsaw.data.transforms.intensity.intensity_shift`).
        plan: the plan to read the data with (the model's, or a resumed run's ``plan.json``); ``None`` plans.

    Attributes:
        plan: the plan used; ``reader``: its :class:`dragsaw.data.CaseReader`; ``in_channels``: channels of the
        data; ``splits``: ``{split: [Case, ...]}``.

    Raises:
        ConfigError / DataError: no training cases (when training), bad settings or data.
    """

    def __init__(self, config: RunConfig, splits_path: Path | None, *, evaluate_only: bool = False,
                 image_shift: str | None = None, plan: Plan | None = None) -> None:
        super().__init__()
        self.config = config
        dc = config.data
        self.splits = cases_for(config, splits_path, evaluate_only=evaluate_only)
        if not self.splits["train"] and not evaluate_only:
            raise ConfigError(f"dataset {dc.dataset!r} at {dc.root!r} has no training cases.")
        if plan is None:
            plan = Plan.from_data(config, self.splits["train"]) if self.splits["train"] else Plan.from_config(config)
        self.plan = plan
        self.reader = plan.reader(value_map=dc.value_map, image_shift=image_shift)
        self.train_set = (
            None if evaluate_only
            else SegmentationDataset(self.splits["train"], plan.reader(value_map=dc.value_map), train=True,
                                     seed=config.train.seed, intensity=dc.intensity_augmentation)
        )
        self.eval_sets = {
            name: SegmentationDataset(cases, self.reader, train=False)
            for name, cases in self.splits.items()
            if name in ("val", "test") and cases
        }
        self.in_channels = (self.train_set or next(iter(self.eval_sets.values()))).channels

    def _samples_per_epoch(self) -> int:
        iterations = self.config.train.iterations_per_epoch
        return len(self.train_set) if iterations is None else iterations * self.config.train.batch_size

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps per epoch on each of ``world`` processes. An epoch is ``train.iterations_per_epoch``
        batches when set (the same budget whatever the number of training cases, e.g. for ``data.train_fraction``
        experiments), else one pass over the training cases; with several processes it is shared out between them
        (``train.batch_size`` is per device), see :func:`dragsaw.engine.distributed.per_rank_steps`.

        Raises:
            ConfigError: fewer samples per epoch than processes.
        """
        return per_rank_steps(self._samples_per_epoch(), self.config.train.batch_size, world)

    def train_dataloader(self) -> DataLoader:
        tc = self.config.train
        generator = torch.Generator()
        rank, world = rank_and_world(self.trainer)
        sampler = EpochSampler(self.train_set, tc.seed, generator, self._samples_per_epoch(), rank, world)
        return DataLoader(self.train_set, batch_size=tc.batch_size, sampler=sampler,
                          drop_last=len(sampler) >= tc.batch_size, num_workers=tc.num_workers, generator=generator,
                          worker_init_fn=worker_init_fn if tc.num_workers > 0 else None)

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_loader("val") if "val" in self.eval_sets else []

    def eval_loader(self, split: str) -> DataLoader:
        """Loader of one evaluation split ("val" or "test"): whole cases, ``train.batch_size`` at a time when they
        share one shape (images), else one at a time (volumes); with several processes each rank gets its share of
        the cases, none twice (see :func:`dragsaw.engine.distributed.gather_cases`)."""
        if split not in self.eval_sets:
            raise ConfigError(f"the run's data has no {split!r} split (it has {sorted(self.eval_sets)}).")
        tc = self.config.train
        dataset = self.eval_sets[split]
        rank, world = rank_and_world(self.trainer)
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
        return DataLoader(dataset, batch_size=tc.batch_size if self.reader.stackable else 1, sampler=sampler,
                          num_workers=tc.num_workers, collate_fn=collate_eval,
                          worker_init_fn=worker_init_fn if tc.num_workers > 0 else None)
