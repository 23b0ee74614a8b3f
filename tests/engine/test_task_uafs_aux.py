"""UAFS options in the engine: init_scale reaches every block, the auxiliary head loss enters the training step."""

from __future__ import annotations

import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import SegmentationTask, build_network
from dragsaw.uafs import UncertaintySelect, head_aux_loss


def cfg2d(*overrides):
    return apply_overrides(load_preset("folder", "cpu"),
                           ["model.options.channels=[4, 8, 16, 32]", "pdcr.enabled=false",
                            "uafs.init_scale=1", "uafs.aux_weight=0", *overrides])  # from the paper's form


def cfg3d(*overrides):
    return apply_overrides(load_preset("decathlon", "cpu"), [
        "data.input_size=[48, 48, 32]", "data.num_classes=3", "data.target_spacing=[1.0, 1.0, 2.5]",
        "model.options.base_filters=4", "model.options.max_filters=16", "pdcr.enabled=false", *overrides,
    ])


def blocks(model):
    return [m for m in model.modules() if isinstance(m, UncertaintySelect)]


def test_init_scale_scales_the_last_layer_of_every_block():
    torch.manual_seed(0)
    plain = build_network(cfg2d(), in_channels=1)
    torch.manual_seed(0)
    scaled = build_network(cfg2d("uafs.init_scale=0.01"), in_channels=1)
    pairs = list(zip(blocks(plain.model), blocks(scaled.model)))
    assert len(pairs) == 2
    for a, b in pairs:
        assert b.init_scale == 0.01
        torch.testing.assert_close(b.head[-1].weight, 0.01 * a.head[-1].weight)
        torch.testing.assert_close(b.head[-1].bias, 0.01 * a.head[-1].bias)
        torch.testing.assert_close(b.head[0].weight, a.head[0].weight)


def _step(task, batch):
    """One training step with the logged values captured; returns (loss, logs, head outputs of that forward)."""
    logs, heads = {}, []
    task.log_dict = lambda values, **kwargs: logs.update(values)
    task.log = lambda *args, **kwargs: None
    hooks = [b.head.register_forward_hook(lambda m, i, out: heads.append(out)) for b in blocks(task.model)]
    try:
        loss = task.training_step(batch, 0)
    finally:
        for hook in hooks:
            hook.remove()
    return loss, logs, heads


def _tasks(config, weight, in_channels):
    torch.manual_seed(0)
    off = SegmentationTask.from_config(config, in_channels=in_channels)
    on = SegmentationTask.from_config(apply_overrides(config, [f"uafs.aux_weight={weight}"]), in_channels=in_channels)
    on.load_state_dict(off.state_dict())
    off.train(), on.train()
    return off, on


@pytest.mark.parametrize("channels_last", [True, False])
def test_aux_term_is_added_with_its_weight_and_nothing_without(channels_last):
    config = cfg2d(f"train.channels_last={str(channels_last).lower()}")
    off, on = _tasks(config, 0.5, in_channels=1)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(2, 1, 32, 32, generator=g), "label": torch.randint(0, 2, (2, 32, 32), generator=g)}

    loss_off, logs_off, _ = _step(off, batch)
    with torch.no_grad():
        reference = off.segmentation_loss(off.model(batch["image"]), batch["label"])
    torch.testing.assert_close(loss_off, reference)  # aux_weight = 0: the loss is the segmentation loss alone
    assert "train/uafs_aux" not in logs_off

    loss_on, logs_on, heads = _step(on, batch)
    assert len(heads) == 2 and {tuple(h.shape[2:]) for h in heads} == {(8, 8), (16, 16)}  # strides 4 and 2
    aux = sum(head_aux_loss(h.detach(), batch["label"]) for h in heads) / len(heads)
    torch.testing.assert_close(logs_on["train/uafs_aux"], aux)
    torch.testing.assert_close(loss_on.detach(), loss_off.detach() + 0.5 * aux)
    for block in blocks(on.model):  # nothing kept on the blocks after the step
        assert block.keep_logits is False and block.last_logits is None

    loss_on.backward()  # the auxiliary term trains every head through its first conv
    grads_on = [b.head[0].weight.grad.clone() for b in blocks(on.model)]
    loss_off.backward()
    for grad_on, block in zip(grads_on, blocks(off.model)):
        assert not torch.allclose(grad_on, block.head[0].weight.grad)


def test_aux_on_a_3d_deep_supervision_host_with_three_classes():
    config = cfg3d("uafs.branches=3")
    off, on = _tasks(config, 0.2, in_channels=1)
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(2, 1, 48, 48, 32, generator=g),
             "label": torch.randint(0, 3, (2, 48, 48, 32), generator=g)}
    with torch.no_grad():
        assert isinstance(on.model(batch["image"]), (list, tuple))  # deep supervision: a list of logits
    loss_off, _, _ = _step(off, batch)
    loss_on, logs, heads = _step(on, batch)
    assert len(heads) == len(blocks(on.model)) >= 3 and all(h.shape[1] == 3 for h in heads)
    aux = sum(head_aux_loss(h.detach(), batch["label"]) for h in heads) / len(heads)
    torch.testing.assert_close(logs["train/uafs_aux"], aux)
    torch.testing.assert_close(loss_on.detach(), loss_off.detach() + 0.2 * aux)


def test_validation_and_inference_keep_no_logits():
    from dragsaw.inference import InferenceSettings, infer

    _, on = _tasks(cfg2d(), 0.5, in_channels=1)
    on.eval()
    logits, unc = infer(on.model, torch.randn(1, 1, 32, 32), InferenceSettings())
    assert logits.shape == (1, 2, 32, 32) and unc.shape == (1, 1, 32, 32)
    assert all(b.last_logits is None and not b.keep_logits for b in blocks(on.model))
