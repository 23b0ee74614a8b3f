"""Crash safety: a run killed with SIGKILL mid-epoch resumes from its last checkpoint and, with
--deterministic, ends with exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dragsaw.cli import main

from .conftest import FAST

SRC = Path(__file__).resolve().parents[2] / "src"
SETTINGS = [*FAST, "train.epochs=4", "train.batch_size=2"]


def args_for(data, out):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet",
            "--deterministic"]
    for item in SETTINGS:
        args += ["--set", item]
    return args


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_folder, tmp_path):
    reference = tmp_path / "reference"
    assert main(args_for(tiny_folder, reference)) == 0
    want = json.loads((reference / "metrics.json").read_text())

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    code = f"import sys, torch; torch.set_num_threads(1); from dragsaw.cli import main; sys.exit(main({args_for(tiny_folder, run)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "metrics.json").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert killed_at < 3

    # A kill can land half-way through a checkpoint write; plant such a partial file so the resume must sweep it.
    (run / "checkpoints" / ".last.ckpt.x1y2z3.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # the saved config keeps deterministic: true
    got = json.loads((run / "metrics.json").read_text())
    print(f"killed after the checkpoint of epoch {killed_at}; test Dice uninterrupted "
          f"{want['test']['mean']['dice_fg']['mean']:.6f}, killed+resumed {got['test']['mean']['dice_fg']['mean']:.6f}; "
          f"steps {want['global_steps']} / {got['global_steps']}")
    assert got["global_steps"] == want["global_steps"]
    for split in ("val", "test"):
        for key in ("dice_fg", "jaccard_fg", "accuracy"):
            assert got[split]["mean"][key]["mean"] == pytest.approx(want[split]["mean"][key]["mean"], abs=1e-6), (split, key)
    assert not list(run.rglob("*.tmp"))  # no half-written checkpoint left behind


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch,
                                                                               capsys):
    from dragsaw.engine.task import SegmentationTask

    original = SegmentationTask.segmentation_loss

    def poisoned(self, output, labels):
        loss = original(self, output, labels)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(SegmentationTask, "segmentation_loss", poisoned)
    run = tmp_path / "nan"
    assert main(args_for(tiny_folder, run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "became nan at global step" in err and "epoch 1" in err
    assert "The last good checkpoint is kept (checkpoints/last.ckpt)" in " ".join(err.split())
    good = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert good["epoch"] == 0 and all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
