"""The PDCR ramp: the factor itself, and that a task's loss at a given step scales the PDCR total by it."""

from __future__ import annotations

import math

import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import SegmentationTask
from dragsaw.engine.task import ramp_factor
from dragsaw.taps import FeatureTaps


@pytest.mark.parametrize(
    "step,ramp_steps,want",
    [(0, 10, 0.0), (5, 10, 0.5), (10, 10, 1.0), (25, 10, 1.0), (1, 2.5, 0.4), (3, 2.5, 1.0), (0, 0, 1.0),
     (7, 0.0, 1.0)],
)
def test_ramp_factor_values(step, ramp_steps, want):
    assert ramp_factor(step, ramp_steps) == pytest.approx(want, abs=1e-15)


def test_ramp_factor_is_monotone_and_linear_until_the_end():
    values = [ramp_factor(s, 40) for s in range(60)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(v == pytest.approx(s / 40) for s, v in enumerate(values[:41]))
    assert values[40:] == [1.0] * 20


@pytest.mark.parametrize(
    "step,ramp_steps,match",
    [(-1, 10, "step must be an int >= 0"), (1.5, 10, "step must be an int >= 0"), (True, 10, "step must be"),
     (0, -1, "ramp_steps must be a finite number >= 0"), (0, math.nan, "ramp_steps must be"),
     (0, math.inf, "ramp_steps must be")],
)
def test_ramp_factor_errors(step, ramp_steps, match):
    with pytest.raises(ValueError, match=match):
        ramp_factor(step, ramp_steps)


def _task(ramp_epochs: float, steps_per_epoch: int) -> SegmentationTask:
    config = apply_overrides(load_preset("folder", "cpu"), [
        "model.options.channels=[4, 8, 16]", "data.input_size=[32, 32]", "pdcr.encoder_samples=[16, 8]",
        "pdcr.decoder_samples=[8, 4]", "pdcr.cross_samples=8", f"pdcr.ramp_epochs={ramp_epochs}",
        "pdcr.layers=null", "pdcr.cross_layers=null", "uafs.aux_weight=0",
    ])
    torch.manual_seed(0)
    return SegmentationTask.from_config(config, in_channels=1, steps_per_epoch=steps_per_epoch)


@pytest.mark.parametrize("step,factor", [(0, 0.0), (5, 0.5), (30, 1.0)])
def test_task_loss_scales_pdcr_by_the_ramp(monkeypatch, step, factor):
    task = _task(ramp_epochs=2, steps_per_epoch=5)  # ramp over 10 steps
    monkeypatch.setattr(SegmentationTask, "global_step", property(lambda self: step))
    logged = {}
    task.log_dict = lambda logs, **k: logged.update(logs)
    task.log = lambda *a, **k: None
    torch.manual_seed(1)
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.randint(0, 2, (2, 32, 32))}
    loss = task.training_step(batch, 0)
    # references computed separately: the segmentation loss and the PDCR total of the same forward
    with FeatureTaps(task.model, task.tap_names) as taps:
        output = task.model(batch["image"])
        pdcr = task.pdcr(taps.pop(), batch["label"], task.strides).total
    seg = task.segmentation_loss(output, batch["label"])
    assert pdcr.item() > 0.1  # so that leaving it out (or not) is visible
    torch.testing.assert_close(loss, seg + factor * pdcr)
    assert logged["train/pdcr_ramp"] == factor
    torch.testing.assert_close(logged["train/pdcr"], pdcr.detach())  # the unramped regulariser
    if step == 0:
        torch.testing.assert_close(loss, seg)  # PDCR excluded at step 0 with a ramp


def test_no_ramp_keeps_full_pdcr_from_step_zero():
    task = _task(ramp_epochs=0, steps_per_epoch=5)
    task.log_dict = task.log = lambda *a, **k: None
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.randint(0, 2, (2, 32, 32))}
    loss = task.training_step(batch, 0)
    with FeatureTaps(task.model, task.tap_names) as taps:
        output = task.model(batch["image"])
        pdcr = task.pdcr(taps.pop(), batch["label"], task.strides).total
    torch.testing.assert_close(loss, task.segmentation_loss(output, batch["label"]) + pdcr)
