"""Lightning data module for volumes: Decathlon-style cases, k-fold splits, the run's plan, patch sampling."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import RunConfig
from ..data import VolumeDataset, collate_eval3d, find_cases, worker_init_fn3d
from ..data import cross_validation_splits, resolve_splits
from ..errors import ConfigError
from ..plan import Plan
from .datamodule import all_as_test, preflight, training_subset
from .distributed import ShardSampler, per_rank_steps, rank_and_world, shard

__all__ = ["VolumeData", "volume_cases"]


def volume_cases(config: RunConfig, splits_path: Path | None, *, verify: bool = True,
                 evaluate_only: bool = False) -> dict:
    """Cases of a volume dataset completed to train/val/test: a cross-validation fold when ``data.fold`` is set,
    else seeded carving as in 2D; with ``evaluate_only`` every case is a test case."""
    dc = config.data
    if not dc.root:
        raise ConfigError(f"no data root for dataset {dc.dataset!r}: pass --data-root PATH (a Decathlon task folder).")
    found = find_cases(dc.dataset, dc.root)
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


class PatchSampler(Sampler[int]):
    """``iterations x batch`` case indices per epoch drawn with replacement, seeded by ``(seed, epoch)``.

    Like :class:`dragsaw.engine.datamodule.EpochSampler`, ``set_epoch`` also reseeds the patch/augmentation
    stream and the DataLoader generator, so a resumed run repeats the uninterrupted run's patches; with
    ``world > 1`` the ranks share the same global draws out (every ``world``-th from ``rank``).
    """

    def __init__(self, dataset, draws: int, seed: int, generator: torch.Generator, rank: int = 0,
                 world: int = 1) -> None:
        self.dataset, self.seed, self.generator = dataset, int(seed), generator
        self.rank, self.world = int(rank), int(world)
        self.global_draws = int(draws)
        self.draws = self.global_draws // self.world
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch + 7_777_777 * self.rank)
        self.dataset.reseed(self.seed * 7_919 + self.epoch + 104_729 * self.rank)

    def __iter__(self):
        order = torch.Generator().manual_seed(self.seed * 15_485_863 + self.epoch)
        draws = torch.randint(len(self.dataset), (self.global_draws,), generator=order).tolist()
        return iter(shard(draws[: self.draws * self.world], self.rank, self.world))

    def __len__(self) -> int:
        return self.draws


class VolumeData(L.LightningDataModule):
    """Train (patches) and val/test (whole volumes, batch 1) loaders of a 3D run.

    The volumes are preprocessed with the run's :class:`dragsaw.plan.Plan` (target spacing, modalities, CT
    statistics, patch size). Without a ``plan`` it is computed from the training cases
    (:meth:`dragsaw.plan.Plan.from_data`: the median spacing of their headers unless ``data.target_spacing`` is
    set, and so on); ``config`` is never changed, so ``config.yaml`` stays as the user wrote it.

    Args:
        config: the run configuration.
        splits_path: where ``splits.json`` is written (or read).
        evaluate_only: every case is a test case (another dataset); needs ``plan`` (the model's) unless ``config``
            carries the derived values (an old configuration).
        image_shift: refused (2D only).
        plan: the plan to preprocess with (the model's, or a resumed run's ``plan.json``); ``None`` plans.

    Attributes:
        plan: the plan used; ``in_channels``: channels of the volumes; ``splits``: ``{split: [Case, ...]}``.

    Raises:
        ConfigError / DataError: no training cases (when planning), bad settings or data.
    """

    def __init__(self, config: RunConfig, splits_path: Path | None, *, evaluate_only: bool = False,
                 image_shift: str | None = None, plan: Plan | None = None) -> None:
        super().__init__()
        if image_shift is not None:
            raise ConfigError(f"intensity shifts ({image_shift!r}) are applied to 2D images only; evaluate this 3D "
                              "run without --shift.")
        self.config = config
        dc, tc = config.data, config.train
        self.splits = volume_cases(config, splits_path, evaluate_only=evaluate_only)
        if not self.splits["train"] and not evaluate_only:
            raise ConfigError(f"dataset {dc.dataset!r} at {dc.root!r} has no training cases.")
        if plan is None:
            plan = (Plan.from_data(config, self.splits["train"]) if self.splits["train"]
                    else Plan.from_config(config))
        self.plan = plan
        common = dict(num_classes=dc.num_classes, target_spacing=plan.require_spacing(), modalities=plan.modalities,
                      patch_size=plan.input_size, ct_stats=plan.ct_stats, value_map=dc.value_map)
        self.train_set = None if evaluate_only else VolumeDataset(self.splits["train"], train=True, seed=tc.seed,
                                                                  intensity=dc.intensity_augmentation, **common)
        self.eval_sets = {
            name: VolumeDataset(cases, train=False, **common)
            for name, cases in self.splits.items() if name in ("val", "test") and cases
        }
        self.in_channels = (self.train_set or next(iter(self.eval_sets.values()))).channels

    def _draws_per_epoch(self) -> int:
        tc = self.config.train
        return (tc.iterations_per_epoch or max(1, len(self.train_set) // tc.batch_size)) * tc.batch_size

    def steps_per_epoch(self, world: int = 1) -> int:
        """Optimizer steps per epoch on each of ``world`` processes: ``train.iterations_per_epoch`` batches of
        patches (else one per ``train.batch_size`` training cases) shared out between the processes.

        Raises:
            ConfigError: fewer patches per epoch than processes.
        """
        return per_rank_steps(self._draws_per_epoch(), self.config.train.batch_size, world)

    def train_dataloader(self) -> DataLoader:
        tc = self.config.train
        generator = torch.Generator()
        rank, world = rank_and_world(self.trainer)
        sampler = PatchSampler(self.train_set, self._draws_per_epoch(), tc.seed, generator, rank, world)
        return DataLoader(
            self.train_set, batch_size=tc.batch_size, drop_last=len(sampler) >= tc.batch_size,
            num_workers=tc.num_workers, sampler=sampler, generator=generator,
            worker_init_fn=worker_init_fn3d if tc.num_workers > 0 else None,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_loader("val") if "val" in self.eval_sets else []

    def eval_loader(self, split: str) -> DataLoader:
        """Whole-volume loader of one evaluation split (batch size 1)."""
        if split not in self.eval_sets:
            raise ConfigError(f"the run's data has no {split!r} split (it has {sorted(self.eval_sets)}).")
        rank, world = rank_and_world(self.trainer)  # several processes: each its share, none twice
        sampler = ShardSampler(len(self.eval_sets[split]), rank, world) if world > 1 else None
        return DataLoader(self.eval_sets[split], batch_size=1, sampler=sampler, collate_fn=collate_eval3d)
