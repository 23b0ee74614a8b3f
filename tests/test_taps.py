"""FeatureTaps, insert_after and receptive_field on unmodified networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dragsaw.taps import FeatureTaps, insert_after, list_tappable, receptive_field
from dragsaw.uafs import UncertaintySelect


def net() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 2, 1),
    )


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_collects_named_outputs_with_gradients_and_removes_hooks():
    model = net()
    x = torch.randn(2, 1, 8, 8)
    with FeatureTaps(model, ["0", "2.1"]) as taps:
        y = model(x)
        assert hook_count(model) == 2
        feats = taps.features
        assert feats["0"].shape == (2, 4, 8, 8) and feats["2.1"].shape == (2, 8, 4, 4)
        torch.testing.assert_close(feats["0"], model[0](x))
        feats["2.1"].sum().backward()
        assert model[0][0].weight.grad is not None
        popped = taps.pop()
        assert taps.features == {} and set(popped) == {"0", "2.1"}
    assert hook_count(model) == 0
    assert y.shape == (2, 2, 4, 4)


def test_hooks_removed_after_exception():
    model = net()
    with pytest.raises(RuntimeError):
        with FeatureTaps(model, ["0"]):
            model(torch.randn(2, 3, 8, 8))  # wrong channel count
    assert hook_count(model) == 0


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"no submodule named '2\.2x'.*Did you mean '2\.2'\? dragsaw\.taps"):
        FeatureTaps(net(), ["2.2x"])
    with pytest.raises(ValueError, match="duplicated names"):
        FeatureTaps(net(), ["0", "0"])
    assert "2.1" in list_tappable(net())


def test_tuple_outputs_and_selector():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    model = nn.Sequential(Pair())
    x = torch.ones(1, 1, 2, 2)
    with FeatureTaps(model, ["0"]) as taps:
        model(x)
        assert taps.features["0"].sum() == 8
    with FeatureTaps(model, ["0"], select=lambda out: out[1]) as taps:
        model(x)
        assert taps.features["0"].sum() == 12


def test_insert_after_wraps_without_editing_source():
    model = net()
    x = torch.randn(2, 1, 8, 8)
    block = UncertaintySelect(8)
    wrapped = insert_after(model, "2", block)
    assert model[2] is wrapped and wrapped[1] is block
    keys = model.state_dict().keys()
    assert "2.0.0.weight" in keys and "2.1.head.0.weight" in keys
    with FeatureTaps(model, ["2", "2.0"]) as taps:
        model(x)
        before, after = taps.features["2.0"], taps.features["2"]
    torch.testing.assert_close(after, block(before))
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        insert_after(model, "nope", block)


def test_receptive_field_of_known_network():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, (3, 5), padding=(1, 2)), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
    )
    model.train()
    rf = receptive_field(model, "3", (1, 1, 48, 48))
    assert rf.stride == (2, 2) and rf.size == (8, 12) and rf.center_offset == (0.5, 0.5)
    rf = receptive_field(model, "5", (1, 1, 48, 48))
    assert rf.stride == (4, 4) and rf.size == (12, 16)
    assert model.training  # the probe works on a copy
    with pytest.raises(ValueError, match="reaches the border"):
        receptive_field(model, "5", (1, 1, 8, 8))


def test_receptive_field_3d_dilated():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv3d(2, 2, 3, stride=2, padding=1))
    rf = receptive_field(model, "2", (1, 1, 24, 24, 24))
    assert rf.stride == (2, 2, 2) and rf.size == (7, 7, 7)


def test_receptive_field_ignores_instance_norm_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    rf = receptive_field(model, "3", (1, 1, 32, 32))
    assert rf.size == (5, 5) and rf.stride == (1, 1)
    assert isinstance(model[1], nn.InstanceNorm2d)  # the model itself is untouched
