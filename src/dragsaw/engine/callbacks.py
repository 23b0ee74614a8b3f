"""Lightning callbacks: training-step timing and peak memory."""

from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .._atomic import atomic_file

__all__ = ["AtomicCheckpointIO", "StepStats", "peak_memory_mb"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name in the same folder, then renamed: a kill mid-write never leaves a
    truncated ``last.ckpt`` or ``best.ckpt`` (the previous complete file stays until the new one is whole)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_file(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory in MiB: CUDA peak allocated on a GPU, else the process's peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class StepStats(L.Callback):
    """Wall-clock seconds per training step (data loading excluded; first ``skip`` steps dropped as warm-up)."""

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.times.append(time.perf_counter() - self._start)

    def seconds_per_step(self) -> float | None:
        """Median seconds per step after the warm-up steps (None before any step)."""
        times = self.times[self.skip :] or self.times
        return sorted(times)[len(times) // 2] if times else None

    def state_dict(self) -> dict:
        return {"times": self.times}

    def load_state_dict(self, state_dict: dict) -> None:
        self.times = list(state_dict.get("times", []))
