"""Output file modes follow the umask: the atomic writers, and a run's and a prediction's outputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dragsaw._atomic import atomic_dir, current_umask, write_json_atomic, write_text_atomic

from _cli import run_cli


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value)
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ umask
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                     (0o002, 0o664, 0o775)])
def test_atomic_outputs_follow_the_umask(mask, file_mode, dir_mode, umask, tmp_path):
    umask(mask)
    assert current_umask() == mask
    assert mode(write_text_atomic("x\n", tmp_path / "a.txt")) == file_mode
    assert mode(write_json_atomic({"a": 1}, tmp_path / "m.json")) == file_mode
    (tmp_path / "a.txt").chmod(0o600)  # replacing a file gives the new one the umask's mode too
    assert mode(write_text_atomic("y\n", tmp_path / "a.txt")) == file_mode
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("z")
    assert mode(tmp_path / "folder") == dir_mode
    assert (tmp_path / "folder" / "inside.txt").read_text() == "z"


def test_run_and_predict_outputs_are_0644_under_umask_022(umask, tmp_path):
    from dragsaw.data import write_folder

    from _cli import FAST2D

    umask(0o022)
    data = write_folder(tmp_path / "data", n_train=6, n_test=2, size=(24, 24), seed=3)
    argv = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(tmp_path / "run"),
            "--quiet"]
    for item in [*FAST2D, "pdcr.enabled=false", "uafs.enabled=false"]:
        argv += ["--set", item]
    assert run_cli(argv).code == 0
    for name in ("metrics.json", "config.yaml", "splits.json", "data.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "checkpoints/best.json", "log.csv", "plots/learning_curves.png"):
        assert mode(tmp_path / "run" / name) == 0o644, name
    image = sorted((data / "test" / "images").iterdir())[0]
    assert run_cli(["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "pred")]).code == 0
    outputs = sorted((tmp_path / "pred").iterdir())
    assert len(outputs) == 4  # mask, prob, overlay and the manifest
    assert {mode(p) for p in outputs} == {0o644}
