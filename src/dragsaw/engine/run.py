"""Runs: train into one directory, evaluate a run (also on another dataset), load a trained model.

A run directory holds ``config.yaml`` (resolved, as the user wrote it; ``model.imports`` names the modules that
register a host of your own, which ``load_task`` imports again), ``plan.json`` (what was derived from the
training data: spacing, modalities, normalisation, network topology; see :mod:`dragsaw.plan`), ``splits.json``,
``checkpoints/{best,last}.ckpt`` (each holding the configuration and the plan), ``metrics.json``, ``log.csv``,
``tensorboard/`` and ``plots/`` (learning curves, test overlays).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import signal
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml

from .._atomic import sweep_temporaries, write_csv_atomic, write_json_atomic, write_text_atomic
from ..config import RunConfig, apply_overrides, check_config, config_from_dict, config_to_dict
from ..errors import ConfigError, DataError
from ..inference import Ensemble, InferenceSettings, check_ensemble, evaluate_loader
from ..metrics import summarize
from ..models.registry import ENTRY_POINT_GROUP, available_models, host_import, host_source, import_modules
from ..plan import PLAN_FILE, Plan
from ..report import plot_learning_curves, plot_overlays
from .callbacks import AtomicCheckpointIO, BestCheckpoint, StepStats, peak_memory_mb, read_best_record
from .datamodule import SegmentationData, cases_for
from .trackers import check_trackers, make_loggers
from .distributed import SharedRunDir, launched_rank
from .guard import RunGuard, RunLock, nearest_existing, slurm_requeue
from .fingerprint import DATA_RECORD, absolute_paths, check_data, moved_data_hint, record_data, require_data_roots
from .task import SegmentationTask

__all__ = ["train", "evaluate_run", "load_task", "resume_config", "evaluation_variant", "load_ensemble"]


def _prepare_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no config.yaml (is it a dragsaw run directory?).")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        pid = RunLock(run_dir).held_by_other() if run_dir.is_dir() else None
        if pid is not None:
            raise ConfigError(f"run directory {str(run_dir)!r} is in use by another dragsaw process (PID {pid}); wait "
                              "for it to end or choose another --out.")
        raise ConfigError(
            f"run directory {str(run_dir)!r} already exists and is not empty; choose another --out, delete it, or "
            "continue it with --resume."
        )
    # nothing is created here: a new run's directory appears only once every check passed (RunGuard.claim)
    existing = nearest_existing(run_dir)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the run directory {str(run_dir)!r}: {str(existing)!r} is "
                          f"{'not a folder' if not existing.is_dir() else 'not writable'}; choose a writable --out.")


def _device_settings(config: RunConfig) -> dict:
    """The Trainer arguments that choose devices, processes and precision (``train.accelerator``, ``devices``,
    ``strategy``, ``num_nodes``, ``sync_batchnorm``, ``precision``)."""
    tc = config.train
    return dict(accelerator=tc.accelerator, devices=tc.devices, strategy=tc.strategy, num_nodes=tc.num_nodes,
                sync_batchnorm=tc.sync_batchnorm, precision=tc.precision)


def _check_trainer_settings(config: RunConfig) -> int:
    """The device settings as Lightning sees them on this machine (a throwaway Trainer that starts no process and
    writes nothing), so that a device or strategy that is not there stops the run before it starts.

    Returns:
        the number of processes the run will have (devices x nodes).

    Raises:
        ConfigError: naming the settings and Lightning's reason.
    """
    settings = _device_settings(config)
    _quiet_lightning()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False)
    except Exception as exc:  # Lightning's MisconfigurationException / ValueError / RuntimeError for the device
        shown = ", ".join(f"train.{k}={v!r}" for k, v in settings.items())
        raise ConfigError(
            f"{shown} do not work on this machine: {exc} Fix them with --set (e.g. train.accelerator=cpu, "
            "train.devices=1, train.strategy=auto, train.precision=32-true)."
        ) from exc
    from lightning.pytorch.accelerators import CPUAccelerator

    if config.train.sync_batchnorm and trainer.world_size > 1 and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(f"train.sync_batchnorm=true with {trainer.world_size} CPU processes: PyTorch's SyncBatchNorm "
                          "runs on GPUs only; set train.sync_batchnorm=false on CPUs.")
    return int(trainer.world_size)


def _write_splits(config: RunConfig, data, path: Path) -> None:
    """``splits.json`` of a new run whose data module was built (and quick-checked) before its directory existed:
    the same seeded split, resolved again with the file (the check is not repeated).

    Raises:
        DataError: the dataset changed between the two reads.
    """
    again = cases_for(config, path, verify=False)
    ids = {k: [c.case_id for c in v] for k, v in again.items()}
    if ids != {k: [c.case_id for c in v] for k, v in data.splits.items()}:
        raise DataError(f"the dataset at {config.data.root} changed while the run was being set up (its cases differ "
                        "between two reads); wait until it is complete and start the run again.")


def _device(trainer: L.Trainer) -> torch.device:
    return trainer.strategy.root_device


def _data_module(config: RunConfig, splits_path: Path | None, evaluate_only: bool = False,
                 image_shift: str | None = None, plan: Plan | None = None):
    """The data module of a configuration (``image_shift``: of the evaluation images), reading the data with
    ``plan`` (the model's or the run's), else with a plan computed from the training cases."""
    return SegmentationData(config, splits_path, evaluate_only=evaluate_only, image_shift=image_shift, plan=plan)


def _run_data(config: RunConfig, run_dir: Path, existing: bool, image_shift: str | None = None,
              plan: Plan | None = None):
    """The data module of a run's own data (read with ``plan``, see :func:`_data_module`); for an ``existing`` run
    (resume, evaluate) the data folders must exist and the data must match the run's ``data.json`` (errors carry
    the ``--set data.root=NEW`` fix)."""
    if existing:
        require_data_roots(config, run_dir)
    try:
        data = _data_module(config, run_dir / "splits.json", image_shift=image_shift, plan=plan)
    except DataError as exc:
        if existing and (run_dir / DATA_RECORD).is_file():
            raise DataError(f"{exc} (run {run_dir} was trained on the data recorded in {run_dir / DATA_RECORD}; "
                            f"{moved_data_hint(run_dir)})") from exc
        raise
    if existing and not check_data(run_dir, data.splits, config):
        warnings.warn(f"run {run_dir} has no {DATA_RECORD} (it predates data records): its data at "
                      f"{config.data.root} cannot be checked against the data it was trained on")
    return data


def _evaluate_splits(task, data, splits, device, plots_dir: Path | None, hd95: bool = True, config=None, *,
                     precision: str = "32-true", tta: bool | None = None, sw_batch_size: int | None = None,
                     progress: bool = False, model=None, postprocess: str = "none") -> dict:
    """Per-case and mean metrics of ``task.model`` (already on ``device``) on each of ``splits`` that ``data`` has;
    overlays of the test split into ``plots_dir``. ``precision``, ``tta`` and ``sw_batch_size`` (None: the run's
    ``train.mirror`` / ``train.sw_batch_size``) as in :class:`dragsaw.inference.InferenceSettings`; ``progress``
    shows a bar per split on stderr. ``model`` (default ``task.model``) may be an ensemble of it and other runs;
    ``postprocess`` as in :func:`dragsaw.inference.evaluate_loader`."""
    config = config or task.config
    settings = InferenceSettings.from_config(task.config, mirror=tta, sw_batch_size=sw_batch_size,
                                             precision=precision, plan=task.plan)
    results = {}
    for split in splits:
        if split not in data.eval_sets:
            continue
        per_case, items = evaluate_loader(
            task.model if model is None else model, data.eval_loader(split), config.data.num_classes, device=device,
            settings=settings, include_hd95=hd95, postprocess=postprocess,
            overlays=8 if (plots_dir is not None and split == "test") else 0, regions=config.data.regions,
            progress=progress, description=f"evaluate {split}",
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


def _build_task(config: RunConfig, data, world: int = 1) -> SegmentationTask:
    """The network of ``config`` for a run of ``world`` processes (its schedule is sized by each one's steps); the
    argument checks of its parts (ValueError) are configuration errors.

    Raises:
        ConfigError: a module refused a value of the configuration (its message names the argument).
    """
    try:
        task = SegmentationTask.from_config(config, data.in_channels, data.steps_per_epoch(world), plan=data.plan)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"the configuration cannot build the network: {exc} Fix the value named (see "
                          "config.yaml or the preset) with --set.") from exc
    if task.pdcr is not None:  # the sampled locations must fit the tapped maps at data.input_size
        size = config.data.input_size
        grids = {n: [-(-s // k) for s, k in zip(size, task.strides[n])] for n in task.pdcr.tapped if n in task.strides}
        try:
            task.pdcr.check_grids(grids)
        except ValueError as exc:
            raise ConfigError(f"PDCR cannot sample its layers at data.input_size={list(size)}: {exc} (the counts are "
                              "pdcr.encoder_samples, pdcr.decoder_samples and pdcr.cross_samples; the crop is "
                              "pdcr.border).") from exc
    return task


def _setup(config: RunConfig, run_dir: Path, resume: bool, progress: bool, guard: RunGuard | None = None,
           world: int = 1):
    """Everything before the first step: config.yaml, splits, data, network, trainer (all input checked here).

    A new run's data and network are built before its directory exists; ``guard.claim`` then checks the disk,
    creates the directory and writes ``splits.json`` (without a guard the directory must exist). A process other
    than rank 0 of a run of ``world`` processes (``guard.primary`` false) builds the same without writing."""
    tc = config.train
    _quiet_lightning()
    L.seed_everything(tc.seed, workers=True, verbose=False)
    new = guard is not None and not resume
    primary = guard is None or guard.primary
    plan = _saved_plan(run_dir) if resume else None  # a resumed run keeps its plan; a new one plans from its data
    if plan is not None and primary and plan.differences(config):
        warnings.warn(f"the resumed run continues with its plan ({run_dir / PLAN_FILE}), which differs from its "
                      f"configuration in {'; '.join(plan.differences(config))}; start a new run to train with "
                      "other values.")
    data = _data_module(config, None) if new else _run_data(config, run_dir, existing=resume, plan=plan)
    task = _build_task(config, data, world)
    if guard is not None:
        guard.claim(task, after=(lambda: _write_splits(config, data, run_dir / "splits.json")) if new else None)
    if primary:
        _record_run(config, run_dir, data)
    has_val = "val" in data.eval_sets
    checkpoint = BestCheckpoint(  # best.ckpt is replaced only by a better model, across resumes and moves
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/dice_fg" if has_val else None,
        mode="max", save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
    )
    stats = StepStats()
    old_log = _history(run_dir) if resume and primary else []
    trainer = L.Trainer(  # the device settings were checked by _check_trainer_settings
        **_device_settings(config), max_epochs=tc.epochs, max_steps=tc.max_steps or -1,
        deterministic=tc.deterministic, check_val_every_n_epoch=tc.val_every, use_distributed_sampler=False,
        callbacks=[checkpoint, stats, SharedRunDir(run_dir, data.splits),
                   *([guard.stop] if guard is not None else [])],
        logger=make_loggers(config, run_dir, resume=resume, primary=primary),
        log_every_n_steps=max(1, min(20, task.hparams.steps_per_epoch)), enable_progress_bar=progress and primary,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=tc.limit_val_batches,
        default_root_dir=run_dir, plugins=[AtomicCheckpointIO()],
    )
    return trainer, task, data, checkpoint, stats, old_log


def _saved_plan(run_dir: Path) -> Plan | None:
    """The plan a resumed run continues with: ``RUN/plan.json``, else the copy in ``checkpoints/last.ckpt``, else
    ``None`` (a run from before plans: it is planned again from the data, with the derived values its
    ``config.yaml`` carries).

    Raises:
        ConfigError: ``plan.json`` (or the checkpoint's plan) is damaged, naming the file and the fix.
    """
    path = run_dir / PLAN_FILE
    if path.is_file():
        return Plan.load(path)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # a damaged checkpoint is reported by _resume_checkpoint; plan again from the data
        return None
    saved = (ckpt.get("hyper_parameters") or {}).get("plan") if isinstance(ckpt, dict) else None
    if saved is None:
        return None
    warnings.warn(f"{path} is missing: the run continues with the plan saved in {last} (and writes it back)")
    return Plan.from_dict(saved, source=f"the plan in {last}",
                          fix=f"delete {last} to train the run again from the start, or restore it from a backup")


def _record_run(config: RunConfig, run_dir: Path, data) -> None:
    """``config.yaml`` (as the user wrote it), ``plan.json`` (:class:`dragsaw.plan.Plan`), ``data.json`` and (for a
    training subset) ``subset.json`` of a run (rank 0 only)."""
    write_text_atomic(yaml.safe_dump(config_to_dict(config), sort_keys=False), run_dir / "config.yaml")
    data.plan.save(run_dir / PLAN_FILE)
    record_data(run_dir, data.splits, config)
    if config.data.train_fraction < 1.0 and data.train_set is not None:  # the training subset, for the record
        dc = config.data
        write_json_atomic({"train_fraction": dc.train_fraction,
                           "subset_seed": config.train.seed if dc.subset_seed is None else dc.subset_seed,
                           "cases": [c.case_id for c in data.splits["train"]]}, run_dir / "subset.json")


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _merge_log(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows before the first step of ``new`` (a resumed session replaces what followed its checkpoint),
    then ``new``."""
    first_new_step = min((int(r["step"]) for r in new if r.get("step")), default=None)
    if first_new_step is not None:
        old = [r for r in old if r.get("step") and int(r["step"]) < first_new_step]
    return old + new


def _history(run_dir: Path) -> list[dict]:
    """Every logged row of a run's earlier sessions: ``log.csv`` completed by the last session's ``csv/metrics.csv``
    (also when that session was killed before it wrote ``log.csv``). Written back to ``log.csv`` at once, because
    Lightning's CSV logger deletes ``csv/metrics.csv`` when the next session starts."""
    rows = _merge_log(_read_log(run_dir / "log.csv"), _read_log(run_dir / "csv" / "metrics.csv"))
    if rows:
        _write_rows(rows, run_dir / "log.csv")
    return rows


def _write_log(old: list[dict], new_csv: Path, target: Path) -> None:
    """``log.csv``: the rows of earlier sessions of a resumed run, then this session's (all columns kept)."""
    _write_rows(_merge_log(old, _read_log(new_csv)), target)


def _write_rows(rows: list[dict], target: Path) -> None:
    write_csv_atomic(rows, list(dict.fromkeys(k for r in rows for k in r)), target)


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          eval_splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Train (or resume) a run and evaluate its best checkpoint on ``eval_splits`` (by default the validation and
    test splits; ``("val",)`` keeps the test split unseen, e.g. while choosing settings).

    Returns:
        the content of ``metrics.json``.

    A new run's directory is created only after the configuration, the data's quick check, the network, the
    devices and the free disk space were checked, and it is removed again when the run fails before its first
    checkpoint. The run holds ``RUN/.lock`` while it trains (a second process is refused). SIGINT / SIGTERM stop
    at the end of the current step with ``last.ckpt`` written (see :mod:`dragsaw.engine.guard`).

    Raises:
        ConfigError / DataError: bad configuration or data (before any training starts), a damaged checkpoint to
            resume from, or a run directory another process holds.
        DiskFullError: too little free space for the first checkpoints, or the disk filled up while training.
        InterruptedRun: SIGINT or SIGTERM (``code`` 130 / 143); the message says what was saved.
        NonFiniteLossError: the loss diverged; the message says whether a checkpoint is kept.
    """
    run_dir = Path(out_dir)
    absolute_paths(config)  # the run means the same data from any working directory
    check_config(config)  # configurations built in Python get the checks of presets and --set
    _import_hosts(config, lenient=resume)  # hosts of your own, before the data is planned for the host
    check_trackers(config)  # a tracker's missing package stops the run before anything is written
    primary = launched_rank() == 0  # several processes: only rank 0 creates, locks and writes the run directory
    if primary:
        _prepare_dir(run_dir, resume)  # creates nothing
    world = _check_trainer_settings(config)
    with RunGuard(run_dir, resume, primary=primary) as guard:  # lock, signals, nothing half-made, disk-full messages
        if resume and primary:
            for path in sweep_temporaries(run_dir):  # a killed run may have died half-way through a checkpoint write
                warnings.warn(f"removed {path}, a partial file left by the interrupted run")
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = _resume_checkpoint(run_dir, last) if resume else None  # a damaged checkpoint stops here
        trainer, task, data, checkpoint, stats, old_log = _setup(config, run_dir, resume, progress, guard, world)
        if slurm_requeue(trainer):  # Lightning's SLURM auto-requeue handles SIGTERM itself
            guard.stop.leave_to_previous(signal.SIGTERM)
        guard.trainer, guard.phase, guard.stop.in_fit = trainer, "fit", True
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
        guard.phase, guard.stop.in_fit = "evaluation", False
        if guard.stop.signum is not None:  # the signal came after the last step: training is complete
            guard.stop.stop_now()
        if not trainer.is_global_zero:  # rank 0 alone evaluates and writes the results
            task.remove_taps()
            return {}
        return _finish(config, run_dir, trainer, task, data, checkpoint, stats, old_log, eval_splits, last)


def _import_hosts(config: RunConfig, lenient: bool = False) -> None:
    """Import the modules of ``model.imports`` (``.py`` paths made absolute: the run means the same files from any
    working directory), then record there the module of a host registered some other way (imported in Python), so
    that ``evaluate`` / ``predict`` rebuild it in another process. Built-in hosts and the hosts of ``dragsaw.models``
    entry points need no entry.

    Args:
        config: the run's configuration (``model.imports`` is updated in place).
        lenient: a module that is not found is only a warning when the host is registered anyway (a resumed run
            whose module moved and was given again with ``--import``).

    Raises:
        ConfigError: a module cannot be imported (under ``lenient``, a module that is not found only when the host
            is not registered otherwise); the message names the module and the fix.
    """
    mc = config.model
    mc.imports = [str(Path(s).expanduser().resolve()) if s.endswith(".py") else s for s in mc.imports]
    failures = import_modules(mc.imports)
    for exc in failures:
        if not (lenient and exc.missing) or mc.name not in available_models():
            raise ConfigError(f"model.imports: cannot import {exc.spec!r} (for the host {mc.name!r}): {exc.reason}; "
                              f"{exc.remedy}.") from exc
        warnings.warn(f"model.imports: cannot import {exc.spec!r}: {exc.reason}; the host {mc.name!r} is registered "
                      "without it, so the run goes on.")
    needed = host_import(mc.name)
    if needed == "__main__":
        warnings.warn(f"the host {mc.name!r} is defined in the running script (__main__), which another process cannot "
                      "import: evaluate and predict of this run work only where the host is registered again; move it "
                      "into a module and name that in model.imports (dragsaw train --import MODULE).")
    elif needed is not None and needed not in mc.imports:
        mc.imports = [*mc.imports, needed]


def _saved_model(ckpt: Path) -> dict:
    """The ``model`` section of the configuration saved in a checkpoint (memory-mapped: the weights are not read);
    ``{}`` when it cannot be read (:func:`load_task` then reports the damaged checkpoint)."""
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return {}
    config = (saved.get("hyper_parameters") or {}).get("config") if isinstance(saved, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def _import_saved_hosts(ckpt: Path) -> None:
    """Import the modules a checkpoint's host needs (its saved ``model.imports``) before the task is rebuilt.

    Raises:
        ConfigError: the host is not registered afterwards: the module that cannot be imported (naming it, the run
            and the fix), or no module registers it (with the distribution the run recorded, if any).
    """
    model = _saved_model(ckpt)
    name, imports = model.get("name"), model.get("imports")
    if not isinstance(name, str):
        return
    imports = [s for s in imports if isinstance(s, str)] if isinstance(imports, list) else []
    failures = import_modules(imports)
    if name in available_models():
        for exc in failures:
            warnings.warn(f"cannot import {exc.spec!r} (model.imports saved with {ckpt}): {exc.reason}; the host "
                          f"{name!r} is registered without it, so it is built with that.")
        return
    run = ckpt.parent.parent if (ckpt.parent.parent / "config.yaml").is_file() else None
    where = f"run {str(run)!r}" if run is not None else f"checkpoint {str(ckpt)!r}"
    record = "model.imports in its config.yaml" if run is not None else "model.imports saved in it"
    if failures:
        exc = failures[0]
        if not exc.missing:
            fix = exc.remedy
        elif exc.spec.endswith(".py"):
            fix = "put the file back at that path, or pass --import with the path where it is now"
        else:
            fix = ("install it or put the folder that holds it on PYTHONPATH, then run again (or pass --import "
                   "naming the module where it is now)")
        raise ConfigError(f"{where} needs the module {exc.spec!r} ({record}) for its host {name!r}, but it cannot be "
                          f"imported here: {exc.reason}; {fix}.") from exc
    tried = f"it imported {imports} ({record}) and" if imports else "it records no module to import and"
    dist = _recorded_distribution(run)
    fix = (f"install the distribution {dist[0]!r} ({dist[1]}), which provided it when the run was trained, or pass "
           "--import MODULE naming a module that registers it" if dist else
           "pass --import MODULE naming the module that registers it, or install the package that provides it")
    raise ConfigError(f"{where} was trained with the host {name!r}, which no module registers here ({tried} no "
                      f"{ENTRY_POINT_GROUP} entry point provides it); {fix}.")


def _recorded_distribution(run: Path | None) -> tuple[str, str] | None:
    """``(distribution, version)`` of the host of an entry point, as the run's ``metrics.json`` records it."""
    try:
        host = (json.loads((run / "metrics.json").read_text()).get("host") or {}) if run is not None else {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(host, dict) or not host.get("distribution"):
        return None
    return str(host["distribution"]), str(host.get("version", "?"))


def _resume_checkpoint(run_dir: Path, last: Path) -> str | None:
    """The checkpoint a resumed run continues from (``last.ckpt``, or a newer SLURM requeue checkpoint), checked.

    Raises:
        ConfigError: the checkpoint is damaged (truncated, not a checkpoint), naming it and the fix.
    """
    hpc = sorted(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime)
    if hpc and (not last.is_file() or hpc[-1].stat().st_mtime > last.stat().st_mtime):
        _check_checkpoint(hpc[-1], f"delete {hpc[-1]} to continue from {last.name}")
        return "hpc"  # Lightning's name for its newest requeue checkpoint in default_root_dir
    if not last.is_file():
        return None
    _check_checkpoint(last, "delete it to train the run again from the start (best.ckpt, if present, stays until "
                            "a better model replaces it), or restore it from a backup")
    return str(last)


def _check_checkpoint(path: Path, fix: str) -> None:
    """Read ``path`` as a training checkpoint (memory-mapped: the weights are not read).

    Raises:
        ConfigError: it is truncated, not a PyTorch checkpoint, or lacks the training state; ``fix`` says what to do.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated zip, random bytes (UnpicklingError), an old non-zip file, ...
        raise ConfigError(f"checkpoint {path} is damaged or not a PyTorch checkpoint ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); {fix}.") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {path} holds no model weights (no state_dict); it is not a dragsaw checkpoint; "
                          f"{fix}.")


def _finish(config, run_dir, trainer, task, data, checkpoint, stats, old_log, eval_splits, last) -> dict:
    """After training: evaluate the best checkpoint, write ``log.csv``, the plots and ``metrics.json``."""
    task.remove_taps()
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    task.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    device = _device(trainer)
    task.to(device)
    data.trainer = None  # one process evaluates every case (the loaders of a fit with several shard them)
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
        "host": host_source(config.model.name),  # its module, and the distribution of an entry point's host
        "checkpoint": best.name,
        "best": read_best_record(run_dir / "checkpoints"),  # epoch, step and validation score of best.ckpt
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
        config = config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), where=f"in {path}: ")
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc}); restore it or start a new run.") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); fix its permissions or start a new run.") from exc
    return apply_overrides(config, list(overrides))


def load_task(run_or_ckpt: str | Path, which: str = "best") -> tuple[SegmentationTask, Path]:
    """Load a trained task from a run directory (its ``checkpoints/<which>.ckpt``) or a checkpoint file.

    The checkpoint alone rebuilds the network: it holds the configuration and the plan (``task.plan``, see
    :mod:`dragsaw.plan`; for checkpoints from before plans it is rebuilt from their configuration). The run's
    ``plan.json`` is not needed. The modules of the saved ``model.imports`` (hosts of your own) are imported first.

    Returns:
        ``(task, checkpoint path)``, the task in eval mode on the CPU.

    Raises:
        ConfigError: the path is neither a run directory with a checkpoint nor a readable checkpoint, or its host
            cannot be registered (a module of its ``model.imports`` that cannot be imported; the message names the
            module, the run and the fix).
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
    _import_saved_hosts(ckpt)  # the modules that register a host of your own (model.imports)
    try:
        task = SegmentationTask.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)
    except ConfigError as exc:  # the checkpoint's saved configuration is refused by this version's checks
        raise ConfigError(f"cannot load checkpoint {str(ckpt)!r}: its saved configuration is invalid ({exc}).") from exc
    except Exception as exc:  # truncated zip (RuntimeError), random bytes (UnpicklingError), missing keys, ...
        other = "last.ckpt" if ckpt.name != "last.ckpt" else "best.ckpt"
        raise ConfigError(
            f"cannot load checkpoint {str(ckpt)!r}: it is damaged or not a dragsaw checkpoint ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Use the run's other checkpoint (checkpoints/{other}) if it is intact, restore the "
            "file from a backup, or train the run again."
        ) from exc
    task.eval()
    return task, ckpt


OWN_DATA_KEYS = ("data.root", "data.extra_root")
"""The overrides ``evaluate`` takes for a run's own data (where the data is now); anything else needs a preset."""


def _own_data_config(task, run_dir: Path, overrides) -> RunConfig:
    """The configuration to evaluate a run on its own data: the checkpoint's, with the data folders of the run's
    ``config.yaml`` (which a resume with ``--set data.root=NEW`` updates) and of ``overrides``."""
    config = task.config
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:
            data = (yaml.safe_load(saved.read_text()) or {}).get("data") or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{saved} is not valid YAML ({exc}); restore it from a backup.") from exc
        config.data.root = data.get("root", config.data.root)
        config.data.extra_root = data.get("extra_root", config.data.extra_root)
    overrides = list(overrides)
    for item in overrides:
        if item.partition("=")[0].strip() not in OWN_DATA_KEYS:
            raise ConfigError(
                f"--set {item!r}: evaluating a run on its own data takes only {' and '.join(OWN_DATA_KEYS)} (where the "
                "data is now); to evaluate on another dataset or with other settings, pass --preset NAME too."
            )
    if overrides:
        moved = apply_overrides(config, overrides)
        config.data.root, config.data.extra_root = moved.data.root, moved.data.extra_root
    return absolute_paths(config)


def load_ensemble(first, ckpt: Path, others=()) -> tuple[torch.nn.Module, list[str]]:
    """The model of ``first`` (a loaded task from ``ckpt``) alone, or with the runs ``others`` (run directories or
    checkpoints) an :class:`dragsaw.inference.Ensemble`, after :func:`dragsaw.inference.check_ensemble`.

    Returns:
        ``(model, checkpoints)``: the model and the checkpoint paths of every member, first first.

    Raises:
        ConfigError: a run that cannot be loaded, or runs whose classes or preprocessing differ (naming the key and
            both values).
    """
    others = list(others or ())
    if not others:
        return first.model, [str(ckpt)]
    tasks, ckpts = [first], [ckpt]
    for run in others:
        task, path = load_task(run)
        tasks.append(task)
        ckpts.append(path)
    check_ensemble([(str(path), task.plan) for task, path in zip(tasks, ckpts)])
    return Ensemble([task.model for task in tasks]), [str(path) for path in ckpts]


def evaluation_variant(*, shift: str | None = None, tta: bool = False, run_tta: bool = False, members: int = 1,
                       postprocess: str = "none") -> str:
    """The name of the folder under ``RUN/evaluation/`` of one way of evaluating a run ("" for the plain one: the
    run's own test-time mirroring, one model, no post-processing), so that variants sit side by side: its parts,
    joined by ``_``, are ``shift-NAME``, ``ensemble-N`` (N runs), ``tta`` / ``no-tta`` (when the mirroring differs
    from the run's ``train.mirror``) and the post-processing (``largest-component``, ``remove-small``,
    ``postprocess-auto``); e.g.
    ``ensemble-3_tta_largest-component``."""
    parts = [f"shift-{shift}"] if shift else []
    if members > 1:
        parts.append(f"ensemble-{members}")
    if bool(tta) != bool(run_tta):
        parts.append("tta" if tta else "no-tta")
    if postprocess and postprocess != "none":
        parts.append("postprocess-auto" if postprocess == "auto" else postprocess)
    return "_".join(parts)


def evaluate_run(run_or_ckpt: str | Path, config: RunConfig | None = None, *, out: str | Path | None = None,
                 splits=("val", "test"), overrides=(), device: str | torch.device = "cpu",
                 precision: str = "32-true", tta: bool | None = None, sw_batch_size: int | None = None,
                 progress: bool = False, shift: str | None = None, ensemble=(), postprocess: str = "none",
                 check_out=None) -> dict:
    """Evaluate a trained run on its own data (``config=None``: its validation and test splits) or on another
    dataset's configuration (every case of that dataset, reported as ``test``).

    On its own data, the data must match the run's ``data.json``; ``overrides`` (only ``data.root=NEW`` and
    ``data.extra_root=NEW``) point the run at data that moved. Writes ``metrics.json`` (and overlays) to ``out``
    when given, else, for the run's own data, to ``<run>/evaluation/`` (``<run>/evaluation/shift-NAME/`` under a
    ``shift``); ``metrics.json`` also records how the model was applied (``"inference"``: device, precision, tta,
    sw_batch_size, shift; ``"variant"``: name, ensemble (the members' checkpoints), ensemble_average, tta,
    postprocess). Other ways of evaluating the same run go to sibling folders named by :func:`evaluation_variant`
    (``<run>/evaluation/ensemble-3_tta_largest-component/``, ...), so their results never overwrite each other.

    ``ensemble`` (other run directories or checkpoints) averages the softmax probabilities (not the logits) and the
    UAFS maps of this run and those runs (each averaged over its own TTA flips first), on this run's data and
    splits; the runs must agree on the classes and the preprocessing (:func:`dragsaw.inference.check_ensemble`).
    ``postprocess`` (one of :data:`dragsaw.inference.POSTPROCESS`) is applied to every native-geometry arg-max
    before scoring; ``"auto"`` first scores every choice on the validation split (one forward pass, the same
    predictions) and uses the best (:func:`dragsaw.inference.choose_postprocess`, recorded as
    ``"postprocess_choice"``). ``check_out`` (a callable taking the output folder) is called
    before anything is read, e.g. to check that the folder can be written.

    The model runs on ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a
    :class:`torch.device`; see :func:`dragsaw.inference.resolve_device`) at ``precision`` (``"32-true"``,
    ``"bf16-mixed"``, ``"16-mixed"``); ``tta`` / ``sw_batch_size`` None take the run's ``train.mirror`` /
    ``train.sw_batch_size``. ``progress`` shows a bar per split on stderr. Metrics are computed in float32.
    ``shift`` (2D) applies a controlled intensity shift to every evaluated image as it is read (e.g. ``"gamma-0.5"``,
    see :func:`dragsaw.data.transforms.intensity.intensity_shift`); ``metrics.json`` records it.

    The data (the run's own or another dataset's) is read with the model's plan from the checkpoint
    (``task.plan``: input size, normalisation, target spacing, modalities, CT statistics; see :mod:`dragsaw.plan`),
    whatever the evaluation configuration says about those; its classes, labels and regions are used.

    Raises:
        ConfigError / DataError: bad overrides, data that moved or changed (with the fix), incompatible data, or a
            device / precision / sw_batch_size this machine cannot use (checked before anything is read).
    """
    from ..inference import AUTO, autocast_dtype, check_postprocess, resolve_device

    device = resolve_device(device)
    autocast_dtype(precision, device)
    postprocess = postprocess if postprocess == AUTO else check_postprocess(postprocess)
    task, ckpt = load_task(run_or_ckpt)
    settings = InferenceSettings.from_config(task.config, mirror=tta, sw_batch_size=sw_batch_size,
                                             precision=precision, plan=task.plan)  # checks sw_batch_size
    model, members = load_ensemble(task, ckpt, ensemble)
    run_dir = ckpt.parent.parent
    variant = evaluation_variant(shift=shift, tta=settings.mirror, run_tta=task.config.train.mirror,
                                 members=len(members), postprocess=postprocess)
    out_dir = Path(out) if out else run_dir / "evaluation" / variant
    if check_out is not None:
        check_out(out_dir)
    own = config is None
    if not own and overrides:
        raise ConfigError("evaluate_run: apply overrides to the other dataset's config before passing it.")
    config = _own_data_config(task, run_dir, overrides) if own else absolute_paths(config)
    if not own and config.data.num_classes != task.config.data.num_classes:
        raise ConfigError(
            f"the model predicts {task.config.data.num_classes} classes but the evaluation data has "
            f"{config.data.num_classes}; evaluate on a dataset with the same classes."
        )
    if not own and config.model.spatial_dims != task.config.model.spatial_dims:
        dims, other = task.config.model.spatial_dims, config.model.spatial_dims
        raise ConfigError(f"the model is {dims}D but the evaluation preset describes {other}D data; evaluate it on "
                          f"{dims}D data (a {'2D image' if dims == 2 else '3D volume'} preset).")
    # the data is read as the model's training data was: its plan (input size, normalisation, spacing, modalities,
    # CT statistics), never one planned from the evaluation data
    if own:  # the run's data, wherever it is now
        data = _run_data(config, run_dir, existing=True, image_shift=shift, plan=task.plan)
    else:  # another dataset: all of it is test data
        data = _data_module(config, None, evaluate_only=True, image_shift=shift, plan=task.plan)
    if postprocess == AUTO and "val" not in data.eval_sets:
        raise ConfigError("--postprocess auto chooses the post-processing on the validation split, and this "
                          f"evaluation has none ({'another dataset is all test data' if not own else 'no val split'}"
                          "); choose none, largest-component or remove-small, or choose on the run's own data first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    choice = None
    if postprocess == AUTO:  # one pass over the validation cases scores every post-processing of the same prediction
        from ..inference import POSTPROCESS, choose_postprocess

        per_case, _ = evaluate_loader(model, data.eval_loader("val"), config.data.num_classes, device=device,
                                      settings=settings, include_hd95=False, regions=None, progress=progress,
                                      description="choose post-processing on val",
                                      alternatives=[p for p in POSTPROCESS if p != "none"])
        choice = choose_postprocess(per_case)
        postprocess = choice["chosen"]
    results = _evaluate_splits(task, data, splits, device, out_dir, config=config, precision=precision, tta=tta,
                               sw_batch_size=sw_batch_size, progress=progress, model=model, postprocess=postprocess)
    payload = {"checkpoint": str(ckpt), "dataset": config.data.dataset, "root": config.data.root,
               "inference": {"device": str(device), "precision": settings.precision, "tta": settings.mirror,
                             "sw_batch_size": settings.sw_batch_size, "shift": shift},
               "variant": {"name": variant or "default", "ensemble": members if len(members) > 1 else None,
                           "ensemble_average": "softmax probabilities" if len(members) > 1 else None,
                           "tta": settings.mirror, "postprocess": postprocess},
               **({"postprocess_choice": choice} if choice is not None else {}), **results}
    write_json_atomic(payload, out_dir / "metrics.json")
    return payload
