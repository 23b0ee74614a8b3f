"""Process-level reliability of ``dragsaw train``: one process per run directory, SIGINT/SIGTERM stop cleanly with
``last.ckpt`` written, a new run that fails before its first checkpoint leaves nothing behind, a full disk is named,
and damaged checkpoints are input errors (exit 2), not bugs (exit 3)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from dragsaw.config import config_to_dict, load_preset
from dragsaw.data import write_folder
from dragsaw.engine.guard import LOCK_FILE, RunLock

from _cli import FAST2D, run_cli, sets

SRC = Path(__file__).resolve().parents[2] / "src"
SETTINGS = [*FAST2D, "train.batch_size=2", "pdcr.layers=null", "pdcr.cross_layers=null"]  # the host's own taps
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 training + 4 test synthetic pairs (5 steps per epoch at batch size 2)."""
    return write_folder(tmp_path_factory.mktemp("safety") / "data", n_train=12, n_test=4, size=(40, 48), seed=1)


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet",
            *sets([*SETTINGS, *extra])]


def spawn(args: list[str]) -> subprocess.Popen:
    """``dragsaw`` in a child process (the CLI's own exit code and stderr)."""
    code = f"import sys, torch; torch.set_num_threads(1); from dragsaw.cli import main; sys.exit(main({args!r}))"
    return subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared: exit {proc.poll()}"


# ------------------------------------------------------------------ 2. signals (and 1. the lock of a live run)
@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_at_a_step_writes_last_ckpt_and_resume_continues(sig, code, data, tmp_path):
    run = tmp_path / "run"
    proc = spawn(argv(data, run, "train.epochs=3"))
    last = run / "checkpoints" / "last.ckpt"
    try:
        wait_for(last, proc)  # the end-of-epoch-0 checkpoint: the run is training epoch 1 now
        if sig == signal.SIGTERM:  # meanwhile a second process is refused, naming the live holder
            second = run_cli(["train", "--resume", str(run), "--quiet"])
            assert second.code == 2 and f"PID {proc.pid}" in second.message and "in use" in second.message, second.err
            again = run_cli(argv(data, run))  # a new run into the same folder too
            assert again.code == 2 and f"PID {proc.pid}" in again.message, again.err
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(rf"dragsaw train: interrupted by {sig.name} at epoch (\d+) step (\d+); last\.ckpt written; "
                         rf"continue with `dragsaw train --resume {re.escape(str(run))}`", lines[0])
    assert match, lines[0]
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (int(match[1]), int(match[2]))
    assert saved["global_step"] < 15 and not (run / "metrics.json").exists()  # stopped before the end
    assert (run / LOCK_FILE).read_text().strip() == str(proc.pid)  # the dead holder's lock file: taken below
    assert run_cli(["train", "--resume", str(run), "--quiet"]).code == 0
    assert json.loads((run / "metrics.json").read_text())["global_steps"] == 15  # 3 epochs x 5 steps


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_validation_lets_it_finish_then_stops_after_the_next_step(sig, code, data, tmp_path,
                                                                                monkeypatch):
    from dragsaw.engine.task import SegmentationTask

    original = SegmentationTask.validation_step

    def signalled(self, batch, batch_idx):
        if self.current_epoch == 0 and batch_idx == 0 and not getattr(signalled, "sent", False):
            signalled.sent = True
            os.kill(os.getpid(), sig)  # as a Ctrl+C / kill while the first validation runs
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationTask, "validation_step", signalled)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    result = run_cli(argv(data, run, "train.epochs=2"))
    assert result.code == code, result.err
    assert result.err == f"dragsaw train: interrupted by {sig.name} at epoch 1 step 6; last.ckpt written; continue " \
                         f"with `dragsaw train --resume {run}`\n"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 0  # the interrupted validation was completed and scored
    monkeypatch.undo()
    assert run_cli(["train", "--resume", str(run), "--quiet"]).code == 0
    assert json.loads((run / "metrics.json").read_text())["global_steps"] == 10


# ------------------------------------------------------------------ 1. exclusive runs
HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("ready", flush=True)
    time.sleep(120)
""")


def test_a_held_run_directory_is_refused_with_the_holders_pid(data, tmp_path, monkeypatch):
    run = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = run_cli(argv(data, run))  # a new run into the held folder
        assert result.code == 2 and f"PID {holder.pid}" in result.message, result.err
        # the race: both saw an empty folder; the second finds the lock at creation time and removes nothing
        monkeypatch.setattr("dragsaw.engine.run._prepare_dir", lambda run_dir, resume: None)
        result = run_cli(argv(data, run))
        assert result.code == 2 and f"PID {holder.pid}" in result.message and "in use" in result.message, result.err
        assert (run / LOCK_FILE).is_file()  # the holder's folder is untouched
        monkeypatch.undo()
        config = config_to_dict(load_preset("folder", "cpu"))
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        result = run_cli(["train", "--resume", str(run), "--quiet"])
        assert result.code == 2 and f"PID {holder.pid}" in result.message, result.err
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(run)  # the holder is dead: its lock file is stale and simply taken
    assert lock.held_by_other() is None
    lock.acquire()
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()


# ------------------------------------------------------------------ 3. nothing half-made
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1"])
def test_a_bad_learning_rate_is_refused_before_anything_is_written(value, data, tmp_path):
    result = run_cli(argv(data, tmp_path / "r", f"train.lr={value}"))
    assert result.code == 2 and "train.lr must be a finite number in (0, 1e+06]" in result.message, result.err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("error,code", [(RuntimeError("boom"), 3), (None, 2)], ids=["bug", "corrupt-image"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_a_failure_before_the_first_checkpoint_leaves_no_run_directory(error, code, existing, data, tmp_path,
                                                                       monkeypatch):
    from dragsaw.errors import DataError

    def fail(self, *args, **kwargs):
        assert (out / "config.yaml").is_file() and (out / "splits.json").is_file()  # set-up had written them
        raise error if error is not None else DataError("image x.png is corrupt (found after the quick check)")

    monkeypatch.setattr("lightning.Trainer.fit", fail)
    out = tmp_path / "parent" / "run"
    if existing:
        out.mkdir(parents=True)
    result = run_cli(argv(data, out))
    assert result.code == code, result.err
    if existing:  # the user's empty folder stays, empty
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not (tmp_path / "parent").exists()


def test_nan_loss_before_any_checkpoint_says_so_and_removes_the_run(data, tmp_path, monkeypatch):
    from dragsaw.engine.task import SegmentationTask

    monkeypatch.setattr(SegmentationTask, "segmentation_loss", lambda self, output, labels: output.sum() * float("nan"))
    result = run_cli(argv(data, tmp_path / "r"))
    assert result.code == 2 and "became nan at global step 0" in result.message, result.err
    assert "No checkpoint had been written, so the new run directory was removed" in result.message
    assert "last good checkpoint is kept" not in result.message
    assert not (tmp_path / "r").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; None where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_too_little_disk_for_the_first_checkpoints_is_refused_before_the_run_exists(data, tmp_path, small_disk,
                                                                                  monkeypatch):
    if small_disk is None:  # simulated: the disk of --out reports 100 kB free
        monkeypatch.setattr("dragsaw.engine.guard.free_space", lambda path: (100_000, tmp_path))
        disk = tmp_path
    else:
        disk = small_disk
        fill(disk, 100_000)
    result = run_cli(argv(data, disk / "run"))
    assert result.code == 2, result.err
    assert "not enough free disk space" in result.message and f"mounted at {disk})" in result.message
    assert re.search(r"has 0\.\d MB free", result.message), result.message
    assert not (disk / "run").exists()


def test_a_full_disk_during_training_names_the_disk_of_out(data, tmp_path, small_disk, monkeypatch):
    if small_disk is None:  # simulated: the first checkpoint write fails with ENOSPC on an fsspec-like temporary
        def enospc(self, checkpoint, path, storage_options=None):
            raise OSError(errno.ENOSPC, "No space left on device", f"{path}.f8a3e.part")

        monkeypatch.setattr("dragsaw.engine.callbacks.AtomicCheckpointIO.save_checkpoint", enospc)
        monkeypatch.setattr("dragsaw.engine.guard.free_space", lambda path: (12_345, tmp_path))
        disk = tmp_path
    else:  # a real full disk: the pre-check is told the checkpoints are free, then the disk fills up
        monkeypatch.setattr("dragsaw.engine.guard.checkpoint_bytes", lambda module: 0)
        monkeypatch.setattr("dragsaw.engine.guard._MARGIN", 0)
        disk = small_disk
        fill(disk, 48_000)
    result = run_cli(argv(data, disk / "run"))
    assert result.code == 2, result.err
    assert f"the disk of --out {disk / 'run'} (mounted at {disk}) is full" in result.message, result.err
    assert "MB free now" in result.message and ".tmp" not in result.message and ".part" not in result.message
    assert "the new run directory was removed" in result.message
    assert not (disk / "run").exists()


# ------------------------------------------------------------------ 4. damaged checkpoints are input errors
def fake_run(root: Path, ckpt: bytes) -> Path:
    """A run directory with a valid config.yaml and ``checkpoints/{best,last}.ckpt`` holding ``ckpt``."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config_to_dict(load_preset("folder", "cpu"))))
    for name in ("best.ckpt", "last.ckpt"):
        (root / "checkpoints" / name).write_bytes(ckpt)
    return root


def damaged(kind: str, tmp_path: Path) -> bytes:
    if kind == "random":
        return os.urandom(4096)
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, path)
    return path.read_bytes()[: path.stat().st_size // 2]


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_a_damaged_checkpoint_is_exit_2_naming_the_file(kind, data, tmp_path):
    run = fake_run(tmp_path / "run", damaged(kind, tmp_path))
    resumed = run_cli(["train", "--resume", str(run), "--quiet"])
    assert resumed.code == 2 and str(run / "checkpoints" / "last.ckpt") in resumed.message, resumed.err
    assert "damaged" in resumed.message and "delete it" in resumed.message
    image = next((data / "test" / "images").iterdir())
    predicted = run_cli(["predict", str(run), str(image), "--out", str(tmp_path / "pred")])
    assert predicted.code == 2 and "best.ckpt" in predicted.message and "damaged" in predicted.message, predicted.err
    assert not (tmp_path / "pred").exists()


# ------------------------------------------------------------------ 2. SLURM: SIGTERM stays Lightning's
SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}


@pytest.mark.parametrize("slurm", [False, True], ids=["plain", "slurm"])
def test_sigterm_is_left_to_lightnings_requeue_under_slurm(slurm, monkeypatch, tmp_path):
    import lightning as L

    from dragsaw.engine.guard import RunGuard, slurm_requeue

    for key in SLURM:
        monkeypatch.delenv(key, raising=False)
    if slurm:
        for key, value in SLURM.items():
            monkeypatch.setenv(key, value)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert slurm_requeue(trainer) is slurm
    before = signal.getsignal(signal.SIGTERM)
    (tmp_path / "run").mkdir()
    with RunGuard(tmp_path / "run", resume=True) as guard:
        assert signal.getsignal(signal.SIGINT) == guard.stop._handle  # SIGINT is always dragsaw's
        if slurm_requeue(trainer):  # what train() does before fit: Lightning then installs its requeue handlers
            guard.stop.leave_to_previous(signal.SIGTERM)
        assert (signal.getsignal(signal.SIGTERM) == before) is slurm
    assert signal.getsignal(signal.SIGTERM) == before  # restored on the way out
