"""UncertaintySelect against the entropy formula computed on its own head, shapes, memory and errors."""

from __future__ import annotations

import math

import pytest
import torch

from dragsaw.uafs import UncertaintySelect, entropy_map, uncertainty_maps


@pytest.mark.parametrize("dims,branches,kernel", [(2, 2, 3), (3, 2, 3), (2, 5, 1), (3, 4, 2), (1, 3, 5)])
def test_forward_matches_entropy_formula(dims, branches, kernel):
    torch.manual_seed(0)
    block = UncertaintySelect(6, spatial_dims=dims, branches=branches, kernel_size=kernel).eval()
    x = torch.randn(2, 6, *([7] * dims))
    logits = block.head(x)
    p = torch.softmax(logits.double(), 1)
    entropy = -(p * torch.log(p)).sum(1, keepdim=True) / math.log(branches)  # written out by hand
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(block.uncertainty(x).double(), entropy, atol=1e-6, rtol=0)
    torch.testing.assert_close(y.double(), x.double() * (2 - entropy), atol=1e-5, rtol=1e-5)


def test_entropy_extremes():
    sure = torch.tensor([[[[50.0]], [[-50.0]]]])  # [1, 2, 1, 1]
    unsure = torch.zeros(1, 2, 1, 1)
    assert entropy_map(sure).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_map(unsure).item() == pytest.approx(1.0)
    assert torch.isfinite(entropy_map(torch.tensor([[[1e4]], [[-1e4]]]).unsqueeze(0))).all()


def test_head_is_a_module_with_m_outputs_and_defaults():
    block2 = UncertaintySelect(64, spatial_dims=2)
    block3 = UncertaintySelect(64, spatial_dims=3)
    assert isinstance(block2.head, torch.nn.Module)
    assert block2.head[-1].out_channels == 2 and block2.head[0].out_channels == 16  # 2D reference width
    assert block3.head[0].out_channels == 16  # C/4 in 3D
    assert block2.head[0].kernel_size == (3, 3)


def test_gradients_reach_head_and_input():
    block = UncertaintySelect(4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    block(x).square().mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.head.parameters())


def test_recording_keeps_only_the_last_map_detached():
    model = torch.nn.Sequential(UncertaintySelect(3), torch.nn.Conv2d(3, 3, 1), UncertaintySelect(3))
    for m in model:
        if isinstance(m, UncertaintySelect):
            m.record = True
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    model(x)
    first = uncertainty_maps(model)["0"]
    model(torch.randn(1, 3, 9, 9))
    maps = uncertainty_maps(model)
    assert set(maps) == {"0", "2"} and maps["0"].shape == (1, 1, 9, 9) and first.shape == (1, 1, 5, 5)
    assert not maps["0"].requires_grad
    off = UncertaintySelect(3)
    off(torch.randn(1, 3, 5, 5))
    assert off.last_uncertainty is None


def test_bf16_autocast_is_finite():
    block = UncertaintySelect(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(torch.randn(2, 4, 8, 8))
        h = block.uncertainty(torch.randn(2, 4, 8, 8))
    assert torch.isfinite(y).all() and h.min() >= 0 and h.max() <= 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"channels": 4, "branches": 1}, "branches must be an int >= 2.*0/0"),
        ({"channels": 0}, "channels must be an int >= 1"),
        ({"channels": 4, "spatial_dims": 4}, "spatial_dims must be 1, 2 or 3"),
        ({"channels": 4, "norm": "layer"}, "norm must be one of"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UncertaintySelect(**kwargs)


def test_forward_shape_error():
    with pytest.raises(ValueError, match=r"expects \[B, 4, \*S\] with 2 spatial axes, got \(2, 3, 8, 8\)"):
        UncertaintySelect(4)(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_pointwise_conv_equals_a_1x1_convolution_and_loads_its_checkpoint(dims):
    from dragsaw.uafs import PointwiseConv

    torch.manual_seed(dims)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims](5, 3, 1)
    point = PointwiseConv(5, 3, dims)
    point.load_state_dict(conv.state_dict())  # same names and shapes: old checkpoints load unchanged
    x = torch.randn(2, 5, *[4 + d for d in range(dims)], dtype=torch.float64, requires_grad=True)
    conv, point = conv.double(), point.double()
    torch.testing.assert_close(point(x), conv(x))
    gx_point, gw_point = torch.autograd.grad(point(x).square().sum(), [x, point.weight])
    gx_conv, gw_conv = torch.autograd.grad(conv(x).square().sum(), [x, conv.weight])
    torch.testing.assert_close(gx_point, gx_conv)
    torch.testing.assert_close(gw_point, gw_conv)
    assert (point.in_channels, point.out_channels) == (5, 3)
