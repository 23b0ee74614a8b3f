"""Several processes, one run: the sharding and gathering rules, the launch environment, and real two-process
runs (gloo on CPU) launched by Lightning itself and by torchrun, in 2D and 3D."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.data import write_decathlon
from dragsaw.engine.datamodule import EpochSampler
from dragsaw.engine.distributed import ShardSampler, gather_cases, launched_rank, per_rank_steps, shard
from dragsaw.engine.run import _check_trainer_settings, _run_data, load_task, resume_config
from dragsaw.errors import ConfigError

from .conftest import FAST, Items

# ----------------------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("n,world", [(1, 2), (5, 2), (6, 3), (7, 4), (10, 1)])
def test_shard_sampler_covers_every_case_with_equal_lengths(n, world):
    parts = [list(ShardSampler(n, rank, world)) for rank in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == -(-n // world)  # a batch on every rank
    assert sorted(set(i for p in parts for i in p)) == list(range(n))
    real = [i for rank in range(world) for i in shard(list(range(n)), rank, world)]
    assert sorted(real) == list(range(n))  # unpadded shards are disjoint


def test_gather_cases_keeps_each_case_once_in_dataset_order():
    cases = [((2, "c"), {"dice": 0.2}), ((0, "a"), {"dice": 0.0}), ((1, "b"), {"dice": 0.1}), ((0, "a"), {"dice": 0.0})]
    assert [c["dice"] for c in gather_cases(None, cases)] == [0.0, 0.1, 0.2]


@pytest.mark.parametrize("samples,batch,world,steps", [(10, 2, 1, 5), (10, 2, 2, 2), (11, 2, 2, 2), (3, 4, 1, 1),
                                                       (5, 4, 2, 1), (8, 2, 4, 1), (500, 2, 4, 62)])
def test_per_rank_steps_against_hand_counts(samples, batch, world, steps):
    assert per_rank_steps(samples, batch, world) == steps


def test_per_rank_steps_refuses_fewer_samples_than_processes():
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        per_rank_steps(3, 1, 4)


@pytest.mark.parametrize("world", [2, 3])
def test_epoch_sampler_shards_the_single_process_order(world):
    one = EpochSampler(Items(7), seed=5, generator=torch.Generator(), num_samples=12)
    one.set_epoch(3)
    order = list(one)
    ranks = [EpochSampler(Items(7), seed=5, generator=torch.Generator(), num_samples=12, rank=r, world=world)
             for r in range(world)]
    for r in ranks:
        r.set_epoch(3)
    per_rank = 12 // world
    assert all(len(r) == per_rank and len(list(r)) == per_rank for r in ranks)
    dealt = [None] * (per_rank * world)
    for rank, sampler in enumerate(ranks):
        dealt[rank::world] = list(sampler)
    assert dealt == order[: per_rank * world]  # the same global order, dealt out
    seeds = [r.dataset.seeds[-1] for r in ranks]
    assert seeds[0] == one.dataset.seeds[-1] and len(set(seeds)) == world  # rank 0 = one process; others differ


@pytest.mark.parametrize("env,rank", [
    ({}, 0), ({"RANK": "3"}, 3), ({"LOCAL_RANK": "1"}, 1), ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),
    ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0), ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, 2),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, 0), ({"RANK": "0", "LOCAL_RANK": "1"}, 0),
])
def test_launched_rank_reads_each_launchers_environment(monkeypatch, env, rank):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_rank() == rank


@pytest.mark.parametrize("value", [2, -1, "auto", "0,1", "1,", [0, 2]])
def test_devices_accepts_lightnings_forms(value):
    config = load_preset("folder", "cpu")
    config.train.devices = value
    from dragsaw.config import check_config

    check_config(config)


@pytest.mark.parametrize("value", [0, -2, "two", [], [1, 1], [-1], 1.5, True])
def test_devices_refuses_other_values_naming_them(value):
    from dragsaw.config import check_config

    config = load_preset("folder", "cpu")
    config.train.devices = value
    with pytest.raises(ConfigError, match=r"train\.devices must be (a count >= 1|of type int \| str \| list\[int\])"):
        check_config(config)


def test_unknown_strategy_is_refused_before_anything_starts():
    config = apply_overrides(load_preset("folder", "cpu"), ["train.strategy=warp_drive", "train.accelerator=cpu"])
    with pytest.raises(ConfigError, match="train.strategy='warp_drive'.*Fix them with --set"):
        _check_trainer_settings(config)


def test_sync_batchnorm_on_cpu_processes_is_refused_with_the_fix():
    config = apply_overrides(load_preset("folder", "cpu"), ["train.accelerator=cpu", "train.devices=2",
                                                            "train.strategy=ddp", "train.sync_batchnorm=true"])
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on GPUs only; set train.sync_batchnorm=false"):
        _check_trainer_settings(config)


def test_world_size_is_devices_times_nodes():
    config = apply_overrides(load_preset("folder", "cpu"), ["train.accelerator=cpu", "train.devices=2",
                                                            "train.strategy=ddp", "train.num_nodes=2"])
    assert _check_trainer_settings(config) == 4


# ----------------------------------------------------------------------------------------------- real runs

DDP = ["train.accelerator=cpu", "train.devices=2", "train.strategy=ddp", "train.precision=64-true"]
"""Two gloo processes; float64 so that the single-process comparison cannot flip a near-tie pixel."""
RUN_FILES = {"checkpoints", "config.yaml", "csv", "data.json", "log.csv", "metrics.json", "plan.json", "plots",
             "splits.json", "tensorboard", ".lock"}


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _cli(args, launcher=None, timeout=300):
    """``python -m dragsaw ARGS`` in a fresh process (as Lightning's launcher re-runs it for rank 1), or through
    ``torchrun``; returns the completed process (its output checked by the caller)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(key, None)
    prefix = [sys.executable, "-m", "dragsaw"]
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                  "dragsaw"]
    done = subprocess.run(prefix + args, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-6000:]}"
    return done


def _train2d(data, out, *extra, launcher=None):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet"]
    return _cli(args + _sets([*FAST, "train.epochs=2", "train.batch_size=2", *extra]), launcher)


def _single_process_validation(run: Path) -> float:
    """val/dice_fg of ``run``'s best.ckpt validated by one process over the run's validation split."""
    task, _ = load_task(run)
    config = resume_config(run)
    data = _run_data(config, run, existing=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=config.train.precision, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return trainer.validate(task, datamodule=data, verbose=False)[0]["val/dice_fg"]


def _last_lr_and_step(run: Path) -> tuple[float, int]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["optimizer_states"][0]["param_groups"][0]["lr"], ckpt["global_step"]


@pytest.fixture(scope="module")
def ddp2d(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = _train2d(tiny_folder, out, *DDP)
    return out, done


@pytest.mark.slow
def test_two_processes_write_the_run_once(ddp2d):
    run, done = ddp2d
    assert {p.name for p in run.iterdir()} <= RUN_FILES
    assert done.stdout.count("results in") == 1 and done.stdout.count("test: Dice") == 1  # rank 0 reports once
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "best.json", "last.ckpt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["mean"]["dice_fg"]["n"] == 4  # rank 0 evaluated every test case, not its shard
    assert "Grad strides do not match" not in done.stderr


@pytest.mark.slow
def test_validation_score_equals_one_process_over_the_same_cases(ddp2d):
    run, _ = ddp2d
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best["score"] == pytest.approx(_single_process_validation(run), abs=1e-12)


@pytest.mark.slow
def test_schedule_ends_where_the_single_device_schedule_ends(ddp2d, tiny_folder, tmp_path):
    run, _ = ddp2d
    single = tmp_path / "single"
    _train2d(tiny_folder, single, "train.precision=64-true")
    (lr2, steps2), (lr1, steps1) = _last_lr_and_step(run), _last_lr_and_step(single)
    config = resume_config(run)
    assert lr2 == pytest.approx(lr1, rel=1e-12) and lr1 == pytest.approx(config.train.min_lr, rel=1e-9)
    assert steps1 == 10 and steps2 == 4  # 10 training cases, batch 2: 5 steps per epoch; 5 samples per rank: 2


@pytest.mark.slow
def test_resume_under_two_processes_continues(ddp2d, tmp_path):
    run, _ = ddp2d
    copy = tmp_path / "resumed"
    import shutil

    shutil.copytree(run, copy)
    _cli(["train", "--resume", str(copy), "--quiet"] + _sets(["train.epochs=3"]))
    assert _last_lr_and_step(copy)[1] == 6  # 2 steps per process and epoch
    _cli(["train", "--resume", str(copy), "--quiet"] + _sets(["train.epochs=4", "train.devices=1"]))
    assert _last_lr_and_step(copy)[1] == 11  # and on one device 5 steps per epoch
    epochs = {row.split(",")[0] for row in (copy / "log.csv").read_text().splitlines()[1:]}
    assert epochs == {"0", "1", "2", "3"}


@pytest.mark.slow
def test_torchrun_launch_gives_the_same_run(ddp2d, tiny_folder, tmp_path):
    run, _ = ddp2d
    out = tmp_path / "torchrun"
    done = _train2d(tiny_folder, out, *DDP, launcher="torchrun")
    assert done.stdout.count("results in") == 1
    assert {p.name for p in out.iterdir()} <= RUN_FILES
    first, second = (json.loads((r / "metrics.json").read_text()) for r in (run, out))
    assert second["test"]["mean"]["dice_fg"]["mean"] == pytest.approx(first["test"]["mean"]["dice_fg"]["mean"],
                                                                      abs=1e-12)


@pytest.mark.slow
def test_two_processes_in_3d(tmp_path):
    task_dir = write_decathlon(tmp_path / "Task99", n_train=5, n_test=2, seed=3)
    out = tmp_path / "run3d"
    args = ["train", "--preset", "decathlon", "--profile", "cpu", "--data-root", str(task_dir), "--out", str(out),
            "--quiet"] + _sets(["data.input_size=[48, 48, 32]", "train.epochs=1", "train.iterations_per_epoch=2",
                                "train.batch_size=1", "model.options={deep_supervision: 1, base_filters: 4, "
                                "max_filters: 16}", "pdcr.encoder_samples=[8, 8]", "pdcr.cross_samples=8",
                                "train.sw_batch_size=1", "data.fold=0", *DDP])
    done = _cli(args)
    assert done.stdout.count("results in") == 1 and {p.name for p in out.iterdir()} <= RUN_FILES
    assert _last_lr_and_step(out)[1] == 1  # 2 patches per epoch shared by 2 ranks, batch 1
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["score"] == pytest.approx(_single_process_validation(out), abs=1e-12)


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the rank-1 process through /proc")
def test_sigterm_to_rank_one_stops_both_after_the_same_step(tiny_folder, tmp_path):
    import signal
    import time

    out = tmp_path / "stopped"
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(tiny_folder), "--out", str(out),
            "--quiet"] + _sets([*FAST, "train.epochs=200", "train.batch_size=2", *DDP])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    proc = subprocess.Popen([sys.executable, "-m", "dragsaw", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "last.ckpt").is_file():  # training is under way on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        ranks = [p for p in _children(proc.pid) if "dragsaw" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(ranks) == 1, ranks
        os.kill(ranks[0], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "interrupted by SIGTERM" in stderr and "last.ckpt written" in stderr
    lr, step = _last_lr_and_step(out)
    assert 0 < step < 200 * 2
    _cli(["train", "--resume", str(out), "--quiet"] + _sets([f"train.epochs={step // 2 + 1}"]))
    assert (out / "metrics.json").is_file()


@pytest.mark.slow
def test_slurm_launch_two_tasks_write_the_run_once(tiny_folder, tmp_path):
    """Two processes started as ``srun --ntasks=2`` starts them (SLURM's variables, one task per device): Lightning's
    SLURM environment connects them, rank 0 alone writes the run."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "slurm"
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(tiny_folder), "--out", str(out),
            "--quiet"] + _sets([*FAST, "train.batch_size=2", *DDP])
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    base.update({"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "dragsaw-test",
                 "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1", "SLURM_NODEID": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONWARNINGS": "ignore"})
    procs = [subprocess.Popen([sys.executable, "-m", "dragsaw", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
             for r in (0, 1)]
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-4000:]
    assert outputs[0][0].count("results in") == 1 and "results in" not in outputs[1][0]
    assert {p.name for p in out.iterdir()} <= RUN_FILES and (out / "metrics.json").is_file()
    assert _last_lr_and_step(out)[1] == 2  # one epoch: 10 cases, batch 2, two ranks
