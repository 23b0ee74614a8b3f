"""Lightning callbacks: training-step timing and peak memory; the best checkpoint kept across resumes and moves."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .._atomic import atomic_file, write_json_atomic

__all__ = ["AtomicCheckpointIO", "BestCheckpoint", "StepStats", "peak_memory_mb", "read_best_record"]

BEST_RECORD = "best.json"


def read_best_record(checkpoint_dir: str | Path) -> dict | None:
    """``checkpoints/best.json`` of a run: ``{"epoch", "global_step", "monitor", "mode", "score"}`` of
    ``best.ckpt``, or None when absent or unreadable."""
    try:
        return json.loads((Path(checkpoint_dir) / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (the monitored best) and ``last.ckpt``, where ``best.ckpt`` is replaced only by a better model,
    whatever resumes and moves of the run directory happened.

    Lightning's ModelCheckpoint forgets the best score when a run is resumed from another path than the one it was
    written under (its state is keyed by the checkpoint folder's path), after which the next validation, however
    bad, replaces ``best.ckpt``. Here the score is taken at resume from ``best.ckpt`` itself (the callback state
    saved inside it holds its own score), so it survives any move; ``best.json`` beside it records epoch, step and
    score for people and for ``metrics.json``.
    """

    @property
    def state_key(self) -> str:
        """The key of plain ModelCheckpoint, so runs written before this class existed resume unchanged."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def _best_file(self) -> Path | None:
        return None if not self.dirpath else Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}"

    def _restore_best(self, write: bool = True) -> None:
        """Take the best score from ``best.ckpt`` on disk (nothing to do without a monitor or a best file);
        ``write``: refresh ``best.json`` (rank 0 only)."""
        best = self._best_file()
        if self.monitor is None or best is None or not best.is_file():
            return
        try:
            saved = torch.load(best, map_location="cpu", weights_only=False, mmap=True)
        except Exception as exc:  # an unreadable best.ckpt must not stop training; a better model replaces it
            warnings.warn(f"{best} cannot be read ({exc}); it will be replaced by the next validated model")
            return
        score = None
        for key, state in (saved.get("callbacks") or {}).items():
            if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("monitor") == self.monitor:
                score = state.get("best_model_score")
                break
        if score is None:
            record = read_best_record(best.parent)
            if record and record.get("global_step") == saved.get("global_step") and record.get("score") is not None:
                score = record["score"]
        if score is None:
            return
        score = torch.as_tensor(float(score))
        path = str(best)
        self.best_k_models = {path: score}
        self.best_model_path = self.kth_best_model_path = path
        self.best_model_score = self.kth_value = score
        if write:
            self._write_record(int(saved.get("epoch", -1)), int(saved.get("global_step", -1)))

    def _write_record(self, epoch: int, step: int) -> None:
        best = self._best_file()
        score = None if self.best_model_score is None else float(self.best_model_score)
        write_json_atomic({"epoch": epoch, "global_step": step, "monitor": self.monitor, "mode": self.mode,
                           "score": score if score is None or math.isfinite(score) else None},
                          best.parent / BEST_RECORD)

    def load_state_dict(self, state_dict: dict) -> None:
        """Lightning's restore, quietly (a moved run has another dirpath); the best score is then taken from
        ``best.ckpt`` in :meth:`on_fit_start`, which Lightning calls after restoring the callbacks."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The dirpath has changed.*")
            super().load_state_dict(state_dict)

    def on_fit_start(self, trainer, pl_module) -> None:
        """The best score of the run from ``best.ckpt`` (it may have been written in another place or session)."""
        super().on_fit_start(trainer, pl_module)
        self._restore_best(write=trainer.is_global_zero)

    def _after_save(self, trainer, before) -> None:
        if trainer.is_global_zero and self.monitor is not None and self.best_model_score is not None and \
                (self.best_model_path, float(self.best_model_score)) != before:
            self._write_record(trainer.current_epoch, trainer.global_step)

    def _snapshot(self):
        return self.best_model_path, None if self.best_model_score is None else float(self.best_model_score)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Save as Lightning does, then update ``best.json`` when ``best.ckpt`` was replaced."""
        before = self._snapshot()
        super().on_validation_end(trainer, pl_module)
        self._after_save(trainer, before)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Save as Lightning does, then update ``best.json`` when ``best.ckpt`` was replaced."""
        before = self._snapshot()
        super().on_train_epoch_end(trainer, pl_module)
        self._after_save(trainer, before)


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
