"""SegmentationTask's optimisation and loss: the warm-up/cosine LR schedule (PyTorch schedulers in a SequentialLR)
against hand values, the one configure_optimizers builds (driven step by step), and the deep-supervision weights of segmentation_loss against
per-output cross-entropies computed here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import SegmentationTask
from dragsaw.engine.task import warmup_cosine_schedule

SMALL = ["model.options.channels=[4, 8, 16]", "data.input_size=[32, 32]", "pdcr.enabled=false", "uafs.enabled=false"]


def _task(*overrides: str, steps_per_epoch: int = 1) -> SegmentationTask:
    config = apply_overrides(load_preset("folder", "cpu"), [*SMALL, *overrides])
    torch.manual_seed(0)
    return SegmentationTask.from_config(config, in_channels=1, steps_per_epoch=steps_per_epoch)


# ------------------------------------------------------------------ warmup_cosine_schedule
HALF_SQRT2 = math.sqrt(2) / 2  # cos(pi/4)


def _drive(scheduler, steps: int) -> list[float]:
    """The learning rate before the first step and after each of ``steps`` optimizer + scheduler steps."""
    optimizer = scheduler.optimizer
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()  # no gradients: nothing changes, but the scheduler sees an optimizer step first
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def _schedule_lrs(warmup: int, total: int, lr: float, min_lr: float, steps: int) -> list[float]:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=lr)
    return _drive(warmup_cosine_schedule(optimizer, warmup, total, min_lr), steps)


@pytest.mark.parametrize("step,want", [
    (0, 1.0),  # step 0 runs at the base rate
    (1, 0.25), (2, 0.5), (3, 0.75),  # linear warm-up over 4 steps
    (4, 1.0),  # end of warm-up: the cosine starts at 1
    (6, 0.1 + 0.9 * 0.5 * (1 + HALF_SQRT2)),  # a quarter of the cosine (progress 2/8)
    (8, 0.1 + 0.9 * 0.5),  # half-way: the mean of 1 and min_ratio
    (10, 0.1 + 0.9 * 0.5 * (1 - HALF_SQRT2)),  # three quarters
    (12, 0.1),  # min_ratio at total
    (13, 0.1), (40, 0.1),  # flat after total
])
def test_warmup_cosine_schedule_hand_values(step, want):
    # base rate 2.0 and min_lr 0.2: the rates are 2 x the multipliers above
    lrs = _schedule_lrs(warmup=4, total=12, lr=2.0, min_lr=0.2, steps=40)
    assert lrs[step] == pytest.approx(2.0 * want, rel=1e-12, abs=1e-15)


def test_warmup_cosine_schedule_without_warmup_and_monotone_decay():
    values = _schedule_lrs(warmup=0, total=10, lr=1.0, min_lr=0.0, steps=14)
    assert values[0] == 1.0
    assert values[5] == pytest.approx(0.5, abs=1e-15)  # cos(pi/2) = 0
    assert values[10:] == pytest.approx([0.0] * 5, abs=1e-15)
    assert all(b <= a for a, b in zip(values, values[1:]))  # non-increasing after the start
    ramp = _schedule_lrs(warmup=5, total=20, lr=1.0, min_lr=0.3, steps=5)[1:]
    assert ramp == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-15)


@pytest.mark.parametrize("warmup,want", [
    (1, [1.0, 1.0, 0.55, 0.1, 0.1]),  # one warm-up step: the cosine starts at step 1, over total - 1 = 2 steps
    (2, [1.0, 0.5, 1.0, 0.1, 0.1]),  # step 1 at half the rate, the cosine over a single step
    (6, [1.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0, 0.1, 0.1]),  # warm-up longer than total: one cosine step
])
def test_warmup_cosine_schedule_short_runs(warmup, want):
    lrs = _schedule_lrs(warmup=warmup, total=3, lr=1.0, min_lr=0.1, steps=len(want) - 1)
    assert lrs == pytest.approx(want, rel=1e-12)


def test_warmup_cosine_schedule_min_lr_above_lr_rises_to_it():
    lrs = _schedule_lrs(warmup=0, total=4, lr=1e-3, min_lr=5e-3, steps=6)
    assert lrs == pytest.approx([1e-3, 1e-3 + 4e-3 * (1 - HALF_SQRT2) / 2, 3e-3, 1e-3 + 4e-3 * (1 + HALF_SQRT2) / 2,
                                 5e-3, 5e-3, 5e-3], rel=1e-12)


# ------------------------------------------------------------------ configure_optimizers
def _lrs(task: SegmentationTask, steps: int) -> list[float]:
    """The learning rate before the first step and after each of ``steps`` scheduler steps."""
    setup = task.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR)
    assert setup["lr_scheduler"]["interval"] == "step"
    assert scheduler.optimizer is optimizer
    return _drive(scheduler, steps)


@pytest.mark.parametrize("done", [0, 3, 9, 20])
def test_schedule_resumes_the_old_lambda_lr_state(done):
    """A checkpoint of the former LambdaLR form of the schedule (state without ``_schedulers``) resumes at the rate
    an uninterrupted run has after ``done`` steps."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=2.0)
    old_state = {"base_lrs": [2.0], "last_epoch": done, "_step_count": done + 1, "verbose": False,
                 "_get_lr_called_within_step": False, "_last_lr": [0.0], "lr_lambdas": [None]}
    resumed = warmup_cosine_schedule(optimizer, 4, 12, 0.2)
    resumed.load_state_dict(old_state)
    want = _schedule_lrs(warmup=4, total=12, lr=2.0, min_lr=0.2, steps=done + 5)
    assert _drive(resumed, 5) == pytest.approx(want[done:], rel=1e-12, abs=1e-15)


def test_configure_optimizers_schedule_reaches_min_lr_at_total():
    # 5 epochs x 4 steps = 20 steps, 1 warm-up epoch = 4 steps, cosine over the 16 others
    task = _task("train.epochs=5", "train.warmup_epochs=1", "train.lr=0.002", "train.min_lr=0.0001",
                 "train.weight_decay=0", steps_per_epoch=4)
    lrs = _lrs(task, 25)
    assert lrs[0] == pytest.approx(0.002, rel=1e-12)  # step 0: the base rate
    assert lrs[1:5] == pytest.approx([0.0005, 0.001, 0.0015, 0.002], rel=1e-12)
    assert lrs[12] == pytest.approx((0.002 + 0.0001) / 2, rel=1e-12)  # half-way through the cosine
    assert lrs[20] == pytest.approx(0.0001, rel=1e-12)  # train.min_lr after `total` steps
    assert lrs[21:] == pytest.approx([0.0001] * 5, rel=1e-12)
    assert all(lrs[s] > 0.0001 * (1 + 1e-9) for s in range(4, 20))


def test_configure_optimizers_total_is_max_steps_when_set():
    task = _task("train.epochs=50", "train.max_steps=10", "train.warmup_epochs=0", "train.lr=0.01",
                 "train.min_lr=0.001", steps_per_epoch=3)
    lrs = _lrs(task, 12)
    assert lrs[5] == pytest.approx(0.0055, rel=1e-12)  # (lr + min_lr) / 2 half-way to max_steps
    assert lrs[9] > 0.001 * (1 + 1e-9)
    assert lrs[10] == pytest.approx(0.001, rel=1e-12) and lrs[12] == pytest.approx(0.001, rel=1e-12)


# ------------------------------------------------------------------ deep supervision
@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 0.5]])
def test_deep_supervision_weights_are_halving_and_normalised(class_weights):
    overrides = ["data.num_classes=3", "train.dice_weight=0"]
    if class_weights is not None:
        overrides.append(f"train.class_weights={class_weights}")
    task = _task(*overrides)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (2, 16, 16), generator=g)
    outputs = [torch.randn(2, 3, s, s, generator=g, dtype=torch.float64) for s in (16, 8, 4)]
    loss = task.segmentation_loss(outputs, labels)

    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float64)
    # nearest downsampling by 2 and 4 keeps the top-left pixel of every 2x2 / 4x4 block
    targets = [labels, labels[:, ::2, ::2], labels[:, ::4, ::4]]
    ce = [F.cross_entropy(o, t, weight=weight) for o, t in zip(outputs, targets)]
    want = (1.0 * ce[0] + 0.5 * ce[1] + 0.25 * ce[2]) / 1.75
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    # the three terms differ, so another weighting (e.g. equal weights, or the finest output only) would not match
    assert min(abs(want - sum(ce) / 3), abs(want - ce[0])) > 1e-3
    single = task.segmentation_loss(outputs[0], labels)  # a plain tensor: the cross-entropy alone
    torch.testing.assert_close(single, ce[0], rtol=1e-12, atol=1e-12)
