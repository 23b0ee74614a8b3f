"""Experiment trackers (``train.loggers``): MLflow to a local store and W&B offline, read back after a real run."""

from __future__ import annotations

import csv
import json

import pytest

from dragsaw.cli import main
from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import trackers
from dragsaw.errors import ConfigError

from .conftest import FAST


def _train(data, out, *extra):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet"]
    for item in [*FAST, "train.epochs=2", *extra]:
        args += ["--set", item]
    return main(args)


def _config(*sets):
    return apply_overrides(load_preset("folder", profile="cpu"), list(sets))


def test_unknown_tracker_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown tracker 'mlfow'.*'mlflow'.*\[csv, mlflow\]"):
        _config("train.loggers=[csv, mlfow]")
    with pytest.raises(ConfigError, match="names a tracker twice"):
        _config("train.loggers=[csv, mlflow, mlflow]")


def test_missing_package_names_the_extra(monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError) as info:
        trackers.check_trackers(_config("train.loggers=[csv, wandb]"))
    assert "'wandb' is not installed" in str(info.value) and "pip install 'dragsaw[wandb]'" in str(info.value)
    trackers.check_trackers(_config("train.loggers=[csv, tensorboard]"))  # the others are not asked for


def test_a_users_telemetry_choice_is_kept(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trackers.make_loggers(_config("train.loggers=[mlflow]"), tmp_path, resume=False)
    assert trackers.os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_csv_is_always_first_and_tensorboard_only_when_asked(tmp_path):
    loggers = trackers.make_loggers(_config("train.loggers=[tensorboard]"), tmp_path, resume=False)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]
    loggers = trackers.make_loggers(_config("train.loggers=[csv]"), tmp_path, resume=False)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    assert not (tmp_path / trackers.TRACKERS_FILE).exists()  # no tracker with ids


@pytest.mark.slow
def test_mlflow_local_store_holds_the_runs_metrics_and_a_resume_continues_it(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    run = tmp_path / "run"
    assert _train(tiny_folder, run, "train.loggers=[csv, mlflow]", "train.experiment=tracked") == 0
    assert trackers.os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # nothing leaves the machine
    ids = json.loads((run / trackers.TRACKERS_FILE).read_text())["mlflow"]
    assert ids["tracking_uri"] == f"sqlite:///{(run / 'mlflow.db').resolve()}" and ids["experiment"] == "tracked"
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    tracked = client.get_run(ids["run_id"])
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert client.get_experiment(tracked.info.experiment_id).name == "tracked"
    with open(run / "log.csv", newline="") as handle:  # dragsaw's own record of the same run
        logged = [(int(r["step"]), float(r["val/dice_fg"])) for r in csv.DictReader(handle) if r.get("val/dice_fg")]
    history = [(m.step, m.value) for m in client.get_metric_history(ids["run_id"], "val/dice_fg")]
    assert len(logged) == 2 and [s for s, _ in sorted(history)] == [s for s, _ in sorted(logged)]
    assert [v for _, v in sorted(history)] == pytest.approx([v for _, v in sorted(logged)], rel=1e-6)
    assert client.get_metric_history(ids["run_id"], "train/loss_epoch")  # training metrics too
    assert tracked.data.params.get("config/train/lr") is not None  # the configuration, flattened

    # a resumed run (two more epochs) logs into the same MLflow run
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=4"]) == 0
    again = json.loads((run / trackers.TRACKERS_FILE).read_text())["mlflow"]
    assert again["run_id"] == ids["run_id"]
    assert len(client.get_metric_history(ids["run_id"], "val/dice_fg")) == 4
    assert len(client.search_runs([tracked.info.experiment_id])) == 1
    resumed = client.get_run(ids["run_id"])  # MLflow params cannot change: the first value stays, the new is tagged
    assert resumed.data.params["config/train/epochs"] == "2"
    assert resumed.data.tags["resumed/config/train/epochs"] == "4 (was 2)"


@pytest.mark.slow
def test_wandb_runs_offline_into_the_run_folder(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert _train(tiny_folder, run, "train.loggers=[csv, wandb]") == 0
    ids = json.loads((run / trackers.TRACKERS_FILE).read_text())["wandb"]
    assert ids["mode"] == "offline" and ids["project"] == "folder"
    assert trackers.os.environ["WANDB_ERROR_REPORTING"] == "false"
    offline = list((run / "wandb").glob(f"offline-run-*-{ids['id']}"))
    assert len(offline) == 1 and (offline[0] / f"run-{ids['id']}.wandb").stat().st_size > 0
