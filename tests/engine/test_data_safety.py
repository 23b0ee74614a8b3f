"""Data safety of runs and predictions: inputs are never overwritten, the best model survives resumes and moves,
the training history survives resumes, and runs do not depend on the working directory."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dragsaw.cli import main
from dragsaw.inference import PREDICT_MANIFEST

from .conftest import FAST

pytestmark = pytest.mark.slow  # every test trains or uses a module-scoped trained run (~20 s in all)


def train_args(data, out, *extra):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet"]
    for item in [*FAST, *extra]:
        args += ["--set", item]
    return args


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, str]:
    """{name: sha256} of the visible files of ``folder`` (the manifest is hidden)."""
    return {p.name: sha(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(train_args(tiny_folder, out, "pdcr.enabled=false")) == 0
    return out


# ------------------------------------------------------------------ 1. predict never replaces the user's files
@pytest.fixture
def pair(tiny_folder, tmp_path):
    """A folder holding case.png and the user's ground truth case_mask.png (the name predict gives its masks)."""
    folder = tmp_path / "pin2"
    folder.mkdir()
    shutil.copy(sorted((tiny_folder / "test" / "images").iterdir())[0], folder / "case.png")
    shutil.copy(sorted((tiny_folder / "test" / "masks").iterdir())[0], folder / "case_mask.png")
    return folder


def test_predict_into_the_input_folder_never_replaces_the_ground_truth(run, pair, capsys):
    truth = sha(pair / "case_mask.png")
    before = listing(pair)
    assert main(["predict", str(run), str(pair), "--out", str(pair)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "case.png" in err and "case_mask.png" in err and "--overwrite" in err and "Traceback" not in err
    assert listing(pair) == before  # nothing written, nothing replaced
    # --overwrite never replaces an input ...
    assert main(["predict", str(run), str(pair), "--out", str(pair), "--overwrite"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"would replace the input file(s) {pair / 'case_mask.png'}" in err and "never replaced" in err
    # ... nor a file dragsaw did not write (case_mask.png is not an input here)
    assert main(["predict", str(run), str(pair / "case.png"), "--out", str(pair), "--overwrite"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"holds {pair / 'case_mask.png'}, which predict would write but which dragsaw did not write" in err
    assert sha(pair / "case_mask.png") == truth and listing(pair) == before
    assert not (pair / PREDICT_MANIFEST).exists()


def test_overwrite_replaces_only_unchanged_outputs_recorded_in_the_manifest(run, pair, tmp_path, capsys):
    (pair / "case_mask.png").unlink()
    inputs = pair
    assert main(["predict", str(run), str(inputs), "--out", str(pair)]) == 2  # the folder holds the input
    assert "already holds 1 of the input file(s)" in " ".join(capsys.readouterr().err.split())
    image = sha(pair / "case.png")
    assert main(["predict", str(run), str(inputs), "--out", str(pair), "--overwrite"]) == 0
    names = {"case_mask.png", "case_prob.png", "case_uncertainty.png", "case_overlay.png"}
    assert set(listing(pair)) == names | {"case.png"}
    manifest = json.loads((pair / PREDICT_MANIFEST).read_text())["files"]
    assert set(manifest) == names
    for name in names:
        assert manifest[name]["sha256"] == sha(pair / name)
        assert manifest[name]["size"] == (pair / name).stat().st_size
        assert manifest[name]["input"] == str((pair / "case.png").resolve())
    # again: the earlier outputs are not taken as inputs (no case_mask_mask.png) and are replaced
    assert main(["predict", str(run), str(inputs), "--out", str(pair), "--overwrite"]) == 0
    assert set(listing(pair)) == names | {"case.png"} and sha(pair / "case.png") == image
    # an output corrected by hand is no longer dragsaw's to replace
    edited = np.zeros(np.asarray(Image.open(pair / "case_mask.png")).shape, np.uint8)
    Image.fromarray(edited).save(pair / "case_mask.png")
    mine = sha(pair / "case_mask.png")
    assert main(["predict", str(run), str(inputs), "--out", str(pair), "--overwrite"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{pair / 'case_mask.png'}, written by dragsaw predict but changed since" in err
    assert sha(pair / "case_mask.png") == mine


def test_predict_into_a_used_folder_needs_overwrite(run, pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(run), str(pair / "case.png"), "--out", str(out)]) == 0
    first = listing(out)
    assert set(first) == {"case_mask.png", "case_prob.png", "case_uncertainty.png", "case_overlay.png"}
    assert main(["predict", str(run), str(pair / "case.png"), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already holds 4 file(s) predict would write" in err and str(out / "case_mask.png") in err
    assert "--overwrite" in err and listing(out) == first


# ------------------------------------------------------------------ 2./3. best model and history across resumes
SCORES = {0: 0.20, 1: 0.30, 2: 0.60, 3: 0.40, 4: 0.50, 5: 0.62, 6: 0.45}
"""The validation Dice each epoch reports (forced): best after session 1: epoch 2; after session 2: epoch 5;
session 3 (after the run directory moved) reports 0.45 only, which must not replace best.ckpt."""


def _forced_scores(self) -> None:
    self.log("val/dice_fg", SCORES[self.current_epoch])


def best_state(run: Path) -> tuple[int, dict]:
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    return ckpt["epoch"], json.loads((run / "checkpoints" / "best.json").read_text())


@pytest.fixture(scope="module")
def three_sessions(tiny_folder, tmp_path_factory):
    """Train 3 epochs into a/, resume in place to 6, move a/ to b/, resume to 7; the best after each session."""
    from dragsaw.engine.task import SegmentationTask

    root = tmp_path_factory.mktemp("moves")
    bests = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SegmentationTask, "on_validation_epoch_end", _forced_scores)
        assert main(train_args(tiny_folder, root / "a", "train.epochs=3", "pdcr.enabled=false",
                               "uafs.enabled=false")) == 0
        bests.append(best_state(root / "a"))
        assert main(["train", "--resume", str(root / "a"), "--quiet", "--set", "train.epochs=6"]) == 0
        bests.append(best_state(root / "a"))
        (root / "a").rename(root / "b")
        assert main(["train", "--resume", str(root / "b"), "--quiet", "--set", "train.epochs=7"]) == 0
        bests.append(best_state(root / "b"))
    return root / "b", bests


def test_best_checkpoint_survives_resumes_and_a_move(three_sessions):
    run, bests = three_sessions
    assert [epoch for epoch, _ in bests] == [2, 5, 5]
    for epoch, record in bests:
        assert record["epoch"] == epoch and record["score"] == pytest.approx(SCORES[epoch])
        assert record["monitor"] == "val/dice_fg"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["checkpoint"] == "best.ckpt" and metrics["epochs"] == 7
    assert metrics["best"]["epoch"] == 5 and metrics["best"]["score"] == pytest.approx(0.62)
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    steps_per_epoch = metrics["global_steps"] // 7
    assert best["global_step"] == metrics["best"]["global_step"] == 6 * steps_per_epoch  # end of epoch 5
    assert last["global_step"] == 7 * steps_per_epoch  # the worse epoch 6 was trained: in last.ckpt only


def test_log_csv_and_tensorboard_keep_every_epoch_of_three_sessions(three_sessions):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = three_sessions
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = {int(float(r["epoch"])): float(r["val/dice_fg"]) for r in rows if r.get("val/dice_fg")}
    assert val == pytest.approx(SCORES)
    trained = {int(float(r["epoch"])) for r in rows if r.get("train/loss_epoch") or r.get("train/total_epoch")}
    assert trained == set(SCORES), sorted(rows[0])
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)  # one history, in order
    events = sorted((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) == 3  # one file per session, none deleted
    logged = []
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        logged += [e.value for e in acc.Scalars("val/dice_fg")] if "val/dice_fg" in acc.Tags()["scalars"] else []
    assert sorted(logged) == pytest.approx(sorted(SCORES.values()))


# ------------------------------------------------------------------ 4. runs do not depend on the working directory
@pytest.fixture(scope="module")
def relative_run(tiny_folder, tmp_path_factory):
    """A run trained from ``home/`` with ``--data-root data`` (relative) into ``runs/r`` (relative)."""
    home = tmp_path_factory.mktemp("home")
    shutil.copytree(tiny_folder, home / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        assert main(train_args("data", "runs/r", "pdcr.enabled=false", "uafs.enabled=false")) == 0
    return home


def test_config_paths_are_absolute_and_evaluate_works_from_another_directory(relative_run, tmp_path, monkeypatch):
    from dragsaw.data import write_folder

    run = relative_run / "runs" / "r"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["root"] == str(relative_run / "data")
    record = json.loads((run / "data.json").read_text())
    assert record["root"] == str(relative_run / "data") and len(record["sha256"]) == 8
    assert record["sizes"]["train/images/" + sorted((relative_run / "data" / "train" / "images").iterdir())[0].name] > 0
    # another directory, which has a folder of the same name holding other data
    write_folder(tmp_path / "data", n_train=12, n_test=4, size=(40, 48), seed=5)
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run), "--out", "ev"]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    first = json.loads((run / "metrics.json").read_text())
    assert again["root"] == str(relative_run / "data")
    for split in ("val", "test"):
        assert again[split]["mean"]["dice_fg"]["mean"] == pytest.approx(first[split]["mean"]["dice_fg"]["mean"])


def test_changed_data_is_refused(relative_run, tmp_path, capsys):
    run = relative_run / "runs" / "r"
    changed = tmp_path / "changed"
    shutil.copytree(relative_run / "data", changed)
    victim = sorted((changed / "test" / "images").iterdir())[1]
    victim.write_bytes(victim.read_bytes() + b"\0" * 7)  # still a valid PNG, 7 bytes longer
    assert main(["evaluate", str(run), "--set", f"data.root={changed}", "--out", str(tmp_path / "ev")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    size = victim.stat().st_size
    assert f"file test/images/{victim.name} has {size} bytes, {size - 7} when the run was trained" in err
    assert "--set data.root=NEW_PATH" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--quiet", "--set", f"data.root={changed}"]) == 2
    assert "is not the data run" in " ".join(capsys.readouterr().err.split())
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(relative_run / "data")
    # same size, other content: caught by the hashed sample
    record = json.loads((run / "data.json").read_text())
    key = min(record["sha256"], key=lambda k: record["sizes"][k])  # a hashed file (the smallest: a mask)
    tampered = tmp_path / "tampered"
    shutil.copytree(relative_run / "data", tampered)
    path, size = tampered / key, (tampered / key).stat().st_size
    with Image.open(path) as im:
        blank = np.zeros_like(np.asarray(im))
    Image.fromarray(blank).save(path)  # other pixels (all 0: compresses to fewer bytes) ...
    pad = size - path.stat().st_size
    assert 0 < pad < 4096
    path.write_bytes(path.read_bytes() + b"\0" * pad)  # ... padded after IEND to the recorded size
    assert path.stat().st_size == size
    assert main(["evaluate", str(run), "--set", f"data.root={tampered}", "--out", str(tmp_path / "ev2")]) == 2
    assert f"file {key} has other content (SHA-256)" in " ".join(capsys.readouterr().err.split())


def test_moved_data_is_refused_with_the_hint_then_accepted_with_set(relative_run, tmp_path, capsys):
    run = relative_run / "runs" / "r"
    first = json.loads((run / "metrics.json").read_text())
    moved = tmp_path / "moved"
    (relative_run / "data").rename(moved)
    try:
        assert main(["evaluate", str(run), "--out", str(tmp_path / "ev")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"not at data.root={relative_run / 'data'}" in err and "--set data.root=NEW_PATH" in err
        assert main(["evaluate", str(run), "--set", f"data.root={moved}", "--out", str(tmp_path / "ev")]) == 0
        again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert again["root"] == str(moved)
        assert again["test"]["mean"]["dice_fg"]["mean"] == pytest.approx(first["test"]["mean"]["dice_fg"]["mean"])
        assert main(["evaluate", str(run), "--set", "train.epochs=3"]) == 2  # only the data location
        assert "takes only data.root and data.extra_root" in " ".join(capsys.readouterr().err.split())
        assert main(["train", "--resume", str(run), "--quiet", "--set", f"data.root={moved}",
                     "--set", "train.epochs=2"]) == 0
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(moved)
        assert json.loads((run / "data.json").read_text())["root"] == str(moved)
        assert main(["evaluate", str(run), "--out", str(tmp_path / "ev3")]) == 0  # the run now knows the new place
    finally:
        moved.rename(relative_run / "data")
