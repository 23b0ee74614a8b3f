"""Several processes, one run: which process writes, how the data is shared out, how results are gathered.

A run on N devices (and M nodes) is N x M processes started by Lightning's own launcher (``train.devices=N``:
Lightning starts the same command again for ranks 1..N-1), by ``torchrun`` or by SLURM's ``srun``. They all run
``dragsaw train`` with the same arguments; only global rank 0 creates, locks and writes the run directory (config,
splits, data record, checkpoints, ``log.csv``, plots, ``metrics.json``). The others build the same data and
network without writing, meet rank 0 at a barrier once the process group is up (:class:`SharedRunDir`) and check
that they read the same splits from ``splits.json``.

Data is shared out by the samplers, not by Lightning's DistributedSampler (``use_distributed_sampler=False``):

* training: every rank draws from the same seeded global order of an epoch and takes every N-th index
  (:func:`shard`); the epoch is the single-device epoch split N ways, so ``per_rank_steps`` steps per rank;
* validation: every rank takes every N-th case; ranks left one case short repeat their first one (Lightning needs
  a batch on every rank, and a DistributedSampler pads the same way), but the per-case results are gathered to
  every rank (:func:`gather_cases`), each case kept once and sorted back into the dataset's order, so the
  validation score is computed over exactly the cases a single process would use.

PDCR compares locations within one image, so its loss on a rank's batch is exactly the loss the same images give
on one device; nothing of it is communicated (its memory is O(B N^2) per tapped layer on each rank).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, DataError

__all__ = ["SharedRunDir", "ShardSampler", "gather_cases", "launched_rank", "per_rank_steps", "rank_and_world",
           "shard"]


def launched_rank() -> int:
    """The global rank a launcher gave this process, from its environment, before any process group exists.

    ``RANK`` (torchrun, and Lightning once set up), else ``LOCAL_RANK`` with ``NODE_RANK`` (the processes Lightning's
    launcher starts; a process on a node other than 0 is never rank 0), else ``SLURM_PROCID`` (srun); 0 when the
    process was started alone. Only ``== 0`` matters to callers: which process owns the run directory.
    """
    env = os.environ
    if env.get("RANK", "").strip():
        return int(env["RANK"])
    if env.get("LOCAL_RANK", "").strip():
        local, node = int(env["LOCAL_RANK"]), int(env.get("NODE_RANK") or env.get("GROUP_RANK") or 0)
        return local if node == 0 else max(1, local)  # the exact rank needs the devices per node; > 0 is enough
    if env.get("SLURM_PROCID", "").strip() and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(env["SLURM_PROCID"])
    return 0


def rank_and_world(trainer: L.Trainer | None) -> tuple[int, int]:
    """``(global rank, world size)`` of a set-up trainer; ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """Every ``world``-th entry of ``indices`` starting at ``rank`` (the whole list for ``world == 1``).

    Raises:
        ValueError: ``rank`` outside ``0..world-1``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank must be in 0..{world - 1} for world size {world}, got {rank}.")
    return list(indices[rank::world])


def per_rank_steps(samples: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps per epoch on each of ``world`` ranks when an epoch is ``samples`` samples (one device's
    epoch) dealt out evenly: ``samples // world`` per rank (a remainder not every rank would get is dropped), in
    full batches of ``batch_size``, or one smaller batch when a rank has fewer samples than a batch.

    Raises:
        ConfigError: (a ValueError) fewer samples than ranks (a rank would have nothing to train on).
    """
    if samples < world:
        raise ConfigError(f"an epoch of {samples} sample(s) cannot be shared by {world} processes; train on fewer "
                         "devices, or set train.iterations_per_epoch so that an epoch has at least one sample each.")
    return max(1, (samples // world) // batch_size)


class ShardSampler(Sampler[int]):
    """The cases of one rank for evaluation: indices ``rank, rank + world, ...`` of ``0..n-1``, in order; a rank
    with one case fewer than rank 0 repeats its first case (or, with fewer cases than ranks, case 0), so that every
    rank has as many batches. :func:`gather_cases` counts every case once.

    Args:
        n: number of cases (>= 1).
        rank, world: this process's global rank and the number of processes.
    """

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.indices = shard(list(range(int(n))), rank, world)
        per_rank = -(-int(n) // world)
        self.indices += [self.indices[0] if self.indices else 0] * (per_rank - len(self.indices))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_cases(trainer: L.Trainer | None, cases: list[tuple[object, dict]]) -> list[dict]:
    """The per-case results of every rank, sorted by key, each key once (the repeats :class:`ShardSampler` pads
    with are dropped), on every rank.

    Args:
        trainer: the trainer (one process: ``cases`` are returned sorted).
        cases: ``(key, metrics)`` pairs of this rank's cases; keys are sortable and unique per case (e.g. the
            position in the dataset and the case id).
    """
    rank, world = rank_and_world(trainer)
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, cases)
        cases = [item for part in parts for item in part]
    unique = dict(cases)  # a repeated case gives the same metrics: keep one
    return [unique[key] for key in sorted(unique)]


class SharedRunDir(L.Callback):
    """Ranks other than 0 wait for rank 0 at a barrier once the process group is up, then check that the run
    directory's ``splits.json`` (written by rank 0) holds the splits they built.

    Args:
        run_dir: the run directory.
        splits: this process's ``{split: [Case, ...]}``.
    """

    def __init__(self, run_dir: str | Path, splits: dict) -> None:
        self.run_dir = Path(run_dir)
        self.splits = {name: [c.case_id for c in cases] for name, cases in splits.items()}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size == 1:
            return
        trainer.strategy.barrier("dragsaw-run-dir")  # rank 0 wrote the run directory before it started fit
        if trainer.is_global_zero:
            return
        import json

        path = self.run_dir / "splits.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"rank {trainer.global_rank} cannot read {path} written by rank 0 ({exc}); every process "
                            "must see the run directory at the same path (a shared file system for several nodes)."
                            ) from exc
        saved = saved.get("splits", saved) if isinstance(saved, dict) else {}
        theirs = {k: [str(c) for c in v] for k, v in saved.items() if isinstance(v, list)}
        same = all(self.splits.get(k, []) == theirs.get(k, []) for k in ("val", "test"))
        if not same or not set(self.splits.get("train", [])) <= set(theirs.get("train", [])):  # train: maybe a subset
            raise DataError(f"rank {trainer.global_rank} built other splits than rank 0 wrote to {path}; every "
                            "process must see the same data at data.root (on every node) and run the same command.")
