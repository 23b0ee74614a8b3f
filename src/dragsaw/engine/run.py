"""Runs: train into one directory, evaluate a run (also on another dataset), load a trained model.

A run directory holds ``config.yaml`` (resolved), ``splits.json``, ``checkpoints/{best,last}.ckpt``,
``metrics.json``, ``log.csv``, ``tensorboard/`` and ``plots/`` (learning curves, test overlays).
"""

from __future__ import annotations

import csv
import logging
import platform
import shutil
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .._atomic import atomic_file, sweep_temporaries, write_json_atomic, write_text_atomic
from ..config import RunConfig, apply_overrides, config_from_dict, config_to_dict
from ..errors import ConfigError
from ..inference import InferenceSettings, evaluate_loader
from ..metrics import summarize
from ..report import plot_learning_curves, plot_overlays
from .callbacks import AtomicCheckpointIO, StepStats, peak_memory_mb
from .data3d import VolumeData
from .datamodule import SegmentationData
from .task import SegmentationTask

__all__ = ["train", "evaluate_run", "load_task", "resume_config"]


def _prepare_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no config.yaml (is it a dragsaw run directory?).")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"run directory {str(run_dir)!r} already exists and is not empty; choose another --out, delete it, or "
            "continue it with --resume."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the run directory {str(run_dir)!r} ({exc}); choose a writable --out.") from exc


def _device(trainer: L.Trainer) -> torch.device:
    return trainer.strategy.root_device


def _data_module(config: RunConfig, splits_path: Path | None, evaluate_only: bool = False):
    """The 2D or 3D data module of a configuration."""
    cls = VolumeData if config.model.spatial_dims == 3 else SegmentationData
    return cls(config, splits_path, evaluate_only=evaluate_only)


def _evaluate_splits(task, data, splits, device, plots_dir: Path | None, hd95: bool = True, config=None) -> dict:
    config = config or task.config
    results = {}
    for split in splits:
        if split not in data.eval_sets:
            continue
        per_case, items = evaluate_loader(
            task.model, data.eval_loader(split), config.data.num_classes, device=device,
            settings=InferenceSettings.from_config(task.config), include_hd95=hd95,
            overlays=8 if (plots_dir is not None and split == "test") else 0, regions=config.data.regions,
        )
        results[split] = {"mean": summarize(per_case), "per_case": per_case}
        if items and plots_dir is not None:
            plot_overlays(items, plots_dir / f"{split}_overlays.png")
    return results


def _quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, tips) out of the user's terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty.*")  # resume
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty.*")  # resume
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


def _setup(config: RunConfig, run_dir: Path, resume: bool, progress: bool):
    """Everything before the first step: config.yaml, splits, data, network, trainer (all input checked here)."""
    tc = config.train
    _quiet_lightning()
    L.seed_everything(tc.seed, workers=True, verbose=False)
    data = _data_module(config, run_dir / "splits.json")  # 3D: resolves the target spacing into config
    task = SegmentationTask.from_config(config, data.in_channels, data.steps_per_epoch())
    write_text_atomic(yaml.safe_dump(config_to_dict(config), sort_keys=False), run_dir / "config.yaml")
    if config.data.train_fraction < 1.0 and data.train_set is not None:  # the training subset, for the record
        dc = config.data
        write_json_atomic({"train_fraction": dc.train_fraction,
                           "subset_seed": config.train.seed if dc.subset_seed is None else dc.subset_seed,
                           "cases": [c.case_id for c in data.splits["train"]]}, run_dir / "subset.json")
    has_val = "val" in data.eval_sets
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/dice_fg" if has_val else None,
        mode="max", save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
    )
    stats = StepStats()
    old_log = _read_log(run_dir / "csv" / "metrics.csv") if resume else []
    trainer = L.Trainer(
        max_epochs=tc.epochs, max_steps=tc.max_steps or -1, accelerator=tc.accelerator, devices=tc.devices,
        precision=tc.precision, deterministic=tc.deterministic, check_val_every_n_epoch=tc.val_every,
        callbacks=[checkpoint, stats], logger=[
            CSVLogger(save_dir=run_dir, name="", version="csv"),
            TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False),
        ],
        log_every_n_steps=max(1, min(20, data.steps_per_epoch())), enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=tc.limit_val_batches,
        default_root_dir=run_dir, plugins=[AtomicCheckpointIO()],
    )
    return trainer, task, data, checkpoint, stats, old_log


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_log(old: list[dict], new_csv: Path, target: Path) -> None:
    """``log.csv``: the rows of earlier sessions of a resumed run, then this session's (all columns kept)."""
    new = _read_log(new_csv)
    first_new_step = min((int(r["step"]) for r in new if r.get("step")), default=None)
    if first_new_step is not None:
        old = [r for r in old if r.get("step") and int(r["step"]) < first_new_step]
    rows = old + new
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_file(target) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          eval_splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Train (or resume) a run and evaluate its best checkpoint on ``eval_splits`` (by default the validation and
    test splits; ``("val",)`` keeps the test split unseen, e.g. while choosing settings).

    Returns:
        the content of ``metrics.json``.

    Raises:
        ConfigError / DataError: bad configuration or data (before any training starts).
    """
    run_dir = Path(out_dir)
    created = None  # the topmost directory this call creates, removed again if the input is bad
    for folder in [run_dir, *run_dir.parents]:
        if not folder.exists():
            created = folder
    created = None if resume else created
    _prepare_dir(run_dir, resume)
    if resume:
        for path in sweep_temporaries(run_dir):  # a killed run may have died half-way through a checkpoint write
            warnings.warn(f"removed {path}, a partial file left by the interrupted run")
    try:
        trainer, task, data, checkpoint, stats, old_log = _setup(config, run_dir, resume, progress)
    except BaseException:
        if created is not None:  # bad input leaves nothing behind
            shutil.rmtree(created, ignore_errors=True)
        raise
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.fit(task, datamodule=data, ckpt_path=str(last) if resume and last.is_file() else None)
    task.remove_taps()

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    task.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    device = _device(trainer)
    task.to(device)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    results = _evaluate_splits(task, data, tuple(eval_splits), device, plots)
    if (run_dir / "csv" / "metrics.csv").is_file():
        _write_log(old_log, run_dir / "csv" / "metrics.csv", run_dir / "log.csv")
        try:
            plot_learning_curves(run_dir / "log.csv", plots / "learning_curves.png")
        except Exception as exc:  # a plot must not lose the metrics of a finished run
            warnings.warn(f"learning curves not plotted: {exc}")
    payload = {
        "run": config.name,
        "checkpoint": best.name,
        **results,
        "seconds_per_step": stats.seconds_per_step(),
        "peak_memory_mb": peak_memory_mb(device),
        "global_steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "seed": config.train.seed,
        "machine": {"platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
    }
    write_json_atomic(payload, run_dir / "metrics.json")
    return payload


def resume_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The saved ``config.yaml`` of a run, with ``overrides`` (e.g. ``train.epochs=60`` to extend it)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no config.yaml (is it a dragsaw run directory?).")
    try:
        config = config_from_dict(yaml.safe_load(path.read_text()), where=f"in {path}: ")
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc}); restore it or start a new run.") from exc
    return apply_overrides(config, list(overrides))


def load_task(run_or_ckpt: str | Path, which: str = "best") -> tuple[SegmentationTask, Path]:
    """Load a trained task from a run directory (its ``checkpoints/<which>.ckpt``) or a checkpoint file.

    Raises:
        ConfigError: the path is neither a run directory with a checkpoint nor a readable checkpoint.
    """
    path = Path(run_or_ckpt)
    if path.is_dir():
        ckpt = path / "checkpoints" / f"{which}.ckpt"
        if not ckpt.is_file():
            ckpt = path / "checkpoints" / "last.ckpt"
    else:
        ckpt = path
    if not ckpt.is_file():
        raise ConfigError(
            f"{str(path)!r} is neither a run directory with checkpoints/{which}.ckpt nor a checkpoint file; pass "
            "the directory a `dragsaw train` wrote, or a .ckpt file."
        )
    try:
        task = SegmentationTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    except (RuntimeError, KeyError, EOFError, OSError) as exc:
        raise ConfigError(f"cannot load checkpoint {str(ckpt)!r}: {exc}. Is the file complete and from dragsaw?") from exc
    task.eval()
    return task, ckpt


def evaluate_run(run_or_ckpt: str | Path, config: RunConfig | None = None, *, out: str | Path | None = None,
                 splits=("val", "test")) -> dict:
    """Evaluate a trained run on its own data (``config=None``: its validation and test splits) or on another
    dataset's configuration (every case of that dataset, reported as ``test``).

    Writes ``metrics.json`` (and overlays) to ``out`` when given, else, for the run's own data, to
    ``<run>/evaluation/``.
    """
    task, ckpt = load_task(run_or_ckpt)
    run_dir = ckpt.parent.parent
    own = config is None
    config = task.config if own else config
    if not own and config.data.num_classes != task.config.data.num_classes:
        raise ConfigError(
            f"the model predicts {task.config.data.num_classes} classes but the evaluation data has "
            f"{config.data.num_classes}; evaluate on a dataset with the same classes."
        )
    if not own and config.model.spatial_dims != task.config.model.spatial_dims:
        dims, other = task.config.model.spatial_dims, config.model.spatial_dims
        raise ConfigError(f"the model is {dims}D but the evaluation preset describes {other}D data; evaluate it on "
                          f"{dims}D data (a {'2D image' if dims == 2 else '3D volume'} preset).")
    if not own:  # the model's input geometry and normalisation stay those it was trained with
        for key in ("input_size", "mean", "std", "target_spacing", "ct_stats"):
            setattr(config.data, key, getattr(task.config.data, key))
    splits_path = run_dir / "splits.json" if own else None
    data = _data_module(config, splits_path, evaluate_only=not own)  # another dataset: all of it is test data
    out_dir = Path(out) if out else run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _evaluate_splits(task, data, splits, torch.device("cpu"), out_dir, config=config)
    payload = {"checkpoint": str(ckpt), "dataset": config.data.dataset, "root": config.data.root, **results}
    write_json_atomic(payload, out_dir / "metrics.json")
    return payload
