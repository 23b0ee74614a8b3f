"""Experiment trackers: Lightning's loggers chosen by ``train.loggers`` (``docs/trackers.md``).

``csv`` is always written (``RUN/csv/metrics.csv``, merged into ``RUN/log.csv``: dragsaw's reports and resumes read
it); ``tensorboard`` writes ``RUN/tensorboard``; ``mlflow`` logs to ``train.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else a SQLite store in the run folder (``RUN/mlflow.db``, artifacts in
``RUN/mlartifacts``), with MLflow's usage telemetry off unless ``$MLFLOW_DISABLE_TELEMETRY`` is set; ``wandb`` runs offline into ``RUN/wandb`` unless ``$WANDB_MODE`` says otherwise (``wandb
sync RUN/wandb/offline-run-*`` uploads it later). The MLflow run id and the W&B run id are kept in
``RUN/trackers.json``, so that a resumed run continues the same tracked run instead of starting a new one.
"""

from __future__ import annotations

import importlib.util
from argparse import Namespace
import json
import logging
import os
import uuid
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from .._atomic import write_json_atomic
from ..config import TRACKERS, RunConfig
from ..errors import ConfigError

TRACKERS_FILE = "trackers.json"
"""``RUN/trackers.json``: the ids of the run in the trackers that have them (MLflow, W&B)."""

_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    # tracker: (Python modules it imports, the pip requirement that installs them)
    "tensorboard": (("tensorboard",), "dragsaw[pipeline]"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "dragsaw[mlflow]"),
    "wandb": (("wandb",), "dragsaw[wandb]"),
}
assert set(_NEEDS) | {"csv"} == set(TRACKERS)


def _mlflow_uri(config: RunConfig, run_dir: Path) -> tuple[str, bool]:
    """MLflow's store: ``(uri, local)``, ``local`` when it is dragsaw's default SQLite file in the run folder."""
    given = config.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return (given, False) if given else (f"sqlite:///{(run_dir / 'mlflow.db').resolve()}", True)


def check_trackers(config: RunConfig) -> None:
    """That the packages of every tracker in ``train.loggers`` import (found, not imported: nothing is started).

    Raises:
        ConfigError: naming the tracker, the missing package and the extra that installs it.
    """
    for name in config.train.loggers:
        modules, extra = _NEEDS.get(name, ((), ""))
        if name == "mlflow" and not _mlflow_uri(config, Path())[0].startswith("sqlite:"):
            modules = ("mlflow",)  # a tracking server needs no database driver on this side
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"train.loggers names {name!r}, but the Python package {missing[0]!r} is not installed",
                              where="train.loggers",
                              fix=f"pip install '{extra}' (or remove {name} from train.loggers)")


def _saved_ids(run_dir: Path) -> dict[str, Any]:
    """``RUN/trackers.json``, or ``{}`` when there is none or it cannot be read (a new tracked run is started)."""
    try:
        saved = json.loads((run_dir / TRACKERS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def make_loggers(config: RunConfig, run_dir: Path, resume: bool, primary: bool = True) -> list[Logger]:
    """The Lightning loggers of a run, CSV first (dragsaw reads its file).

    Args:
        config: the run's configuration (``train.loggers``, ``train.experiment``, ``train.tracking_uri``).
        run_dir: the run folder; local stores are written inside it.
        resume: continue the MLflow / W&B runs recorded in ``RUN/trackers.json`` (when it exists).
        primary: rank 0 of a multi-process run: only it creates the tracked runs and writes ``trackers.json``.

    Returns:
        ``[CSVLogger, *others in the order of train.loggers]``.

    Raises:
        ConfigError: a tracker's package is missing (see :func:`check_trackers`).
    """
    check_trackers(config)
    tc = config.train
    experiment = tc.experiment or config.name
    saved = _saved_ids(run_dir) if resume else {}
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="csv")]
    ids: dict[str, Any] = {}
    for name in tc.loggers:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False))
        elif name == "mlflow":
            loggers.append(_mlflow(config, run_dir, experiment, saved.get("mlflow") or {}, primary, ids))
        elif name == "wandb":
            loggers.append(_wandb(run_dir, experiment, saved.get("wandb") or {}, ids))
    if primary and ids:
        write_json_atomic({**saved, **ids}, run_dir / TRACKERS_FILE)
    return loggers


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with ``/``-joined keys, as Lightning flattens hyperparameters for MLflow."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _mlflow(config: RunConfig, run_dir: Path, experiment: str, saved: dict, primary: bool, ids: dict) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    class ResumableMLFlowLogger(MLFlowLogger):
        """MLflow params are immutable: a resumed session keeps the first session's and records the values it
        changed (``--set`` on ``--resume``) as tags ``resumed/<key>``, where MLflow would refuse the run."""

        @rank_zero_only
        def log_hyperparams(self, params) -> None:
            logged = self.experiment.get_run(self.run_id).data.params
            if not logged:
                return super().log_hyperparams(params)
            for key, value in _flat(vars(params) if isinstance(params, Namespace) else dict(params)).items():
                value = str(value)[:250]  # as Lightning truncates them
                if key in logged and logged[key] != value:
                    self.experiment.set_tag(self.run_id, f"resumed/{key}", f"{value} (was {logged[key]})")

    for noisy in ("mlflow", "alembic"):  # database migrations and experiment creation are logged at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri, local = _mlflow_uri(config, run_dir)
    # MLflow 3 sends anonymous usage telemetry to its makers; a run logging to a local store stays on the machine
    # unless the user says otherwise (MLFLOW_DISABLE_TELEMETRY=false)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
    logger = ResumableMLFlowLogger(experiment_name=experiment, run_name=run_dir.name, tracking_uri=uri, run_id=run_id,
                          artifact_location=(run_dir / "mlartifacts").resolve().as_uri() if local else None,
                          tags={"dragsaw.run_dir": str(run_dir.resolve())})
    if primary:
        ids["mlflow"] = {"tracking_uri": uri, "experiment": experiment, "run_id": logger.run_id}  # creates the run
    return logger


def _wandb(run_dir: Path, project: str, saved: dict, ids: dict) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    run_id = saved.get("id") or uuid.uuid4().hex[:8]
    mode = os.environ.get("WANDB_MODE") or "offline"  # never reaches a server unless asked to
    if mode == "offline":  # nor do W&B's error reports (Sentry), unless the user set WANDB_ERROR_REPORTING
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    ids["wandb"] = {"id": run_id, "project": project, "mode": mode}
    return WandbLogger(project=project, name=run_dir.name, save_dir=str(run_dir), id=run_id, mode=mode)
