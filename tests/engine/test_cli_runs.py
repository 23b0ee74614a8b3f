"""End to end through the command line: train, evaluate, predict, resume, and the errors users meet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from dragsaw.cli import main

from .conftest import FAST


def train_args(data, out, *extra):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet"]
    for item in [*FAST, *extra]:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def trained(tiny_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "full"
    assert main(train_args(tiny_folder, run)) == 0
    return run


@pytest.mark.slow
def test_run_directory_contents(trained):
    for name in ("config.yaml", "splits.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json",
                 "log.csv", "plots/learning_curves.png", "plots/test_overlays.png"):
        assert (trained / name).is_file(), name
    assert any((trained / "tensorboard").iterdir())
    metrics = json.loads((trained / "metrics.json").read_text())
    splits = json.loads((trained / "splits.json").read_text())["splits"]
    assert len(metrics["test"]["per_case"]) == len(splits["test"]) == 4  # the official test folder
    assert {c["case_id"] for c in metrics["test"]["per_case"]} == set(splits["test"])
    assert not set(splits["test"]) & set(splits["train"] + splits["val"])
    mean = metrics["test"]["mean"]["dice_fg"]["mean"]
    per_case = [c["dice_fg"] for c in metrics["test"]["per_case"]]
    assert mean == pytest.approx(np.mean(per_case))  # macro average over cases
    assert metrics["seconds_per_step"] > 0 and metrics["peak_memory_mb"] > 0
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["model"]["options"]["channels"] == [4, 8, 16] and config["pdcr"]["enabled"] is True


@pytest.mark.slow
def test_evaluate_reproduces_training_metrics(trained, tmp_path):
    assert main(["evaluate", str(trained), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    first = json.loads((trained / "metrics.json").read_text())
    for split in ("val", "test"):
        assert again[split]["mean"]["dice_fg"]["mean"] == pytest.approx(first[split]["mean"]["dice_fg"]["mean"])


@pytest.mark.slow
def test_predict_writes_native_size_outputs_and_reports_bad_inputs(trained, tiny_folder, tmp_path, capsys):
    images = sorted((tiny_folder / "test" / "images").iterdir())[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "pred"
    code = main(["predict", str(trained), *map(str, images), str(bad), "--out", str(out)])
    assert code == 2  # one bad input: the others are written, the exit code says so
    assert "broken.png" in capsys.readouterr().err
    for image in images:
        size = Image.open(image).size
        mask = Image.open(out / f"{image.stem}_mask.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{image.stem}_prob.png").size == size
        assert Image.open(out / f"{image.stem}_uncertainty.png").size == size  # the model has UAFS
        assert (out / f"{image.stem}_overlay.png").is_file()
    assert not list(out.glob("broken*"))


@pytest.mark.slow
def test_resume_extends_training(tiny_folder, tmp_path):
    run = tmp_path / "resumable"
    assert main(train_args(tiny_folder, run, "pdcr.enabled=false", "uafs.enabled=false")) == 0
    first = json.loads((run / "metrics.json").read_text())
    splits = (run / "splits.json").read_text()
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=2"]) == 0
    second = json.loads((run / "metrics.json").read_text())
    assert second["global_steps"] == 2 * first["global_steps"]
    assert (run / "splits.json").read_text() == splits


@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "--preset", "nope", "--data-root", "x"], "unknown preset 'nope'"),
        (["train", "--preset", "folder", "--data-root", "/does/not/exist"], "/does/not/exist"),
        (["train", "--preset", "folder"], "--data-root"),
        (["train", "--preset", "folder", "--data-root", "x", "--set", "train.epoch=1"], "Did you mean"),
        (["evaluate", "/no/such/run"], "neither a run directory"),
        (["predict", "/no/such/run", "a.png", "--out", "o"], "neither a run directory"),
    ],
)
def test_errors_are_one_paragraph_without_traceback(args, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert not (tmp_path / "runs").exists()  # nothing left behind
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"dragsaw {args[0]}: error:")
    assert match.replace("\\", "") in err.replace("\n", " ")


@pytest.mark.slow
def test_existing_run_directory_is_not_overwritten(trained, tiny_folder, capsys):
    before = (trained / "metrics.json").read_text()
    assert main(train_args(tiny_folder, trained)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (trained / "metrics.json").read_text() == before


def test_verify_command_exit_codes(tiny_folder, tmp_path, capsys):
    assert main(["verify", "--preset", "folder", "--data-root", str(tiny_folder)]) == 0
    assert "problems: 0 error(s)" in capsys.readouterr().out
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.full((8, 8), 2, np.uint8)).save(bad / "masks" / "a.png")  # 2 in a binary task
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "images" / "b.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "masks" / "b.png")
    assert main(["verify", "--preset", "folder", "--data-root", str(bad)]) == 2
    assert "a.png" in capsys.readouterr().out
    # training runs the quick check first and stops before creating anything
    assert main(["train", "--preset", "folder", "--data-root", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "failed the quick check" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_evaluate_on_another_dataset_uses_all_of_its_cases(trained, tmp_path):
    from dragsaw.data import write_folder

    other = write_folder(tmp_path / "other", n_train=3, n_test=2, size=(36, 44), seed=7)
    out = tmp_path / "cross"
    assert main(["evaluate", str(trained), "--preset", "folder", "--data-root", str(other), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["test"]["per_case"]) == 5 and "val" not in metrics
