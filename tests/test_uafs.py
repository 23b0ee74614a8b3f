"""UncertaintySelect against the entropy formula computed on its own head, shapes, memory and errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dragsaw.uafs import (UncertaintySelect, composition_targets, entropy_map, head_aux_loss, uafs_aux_loss,
                          uncertainty_maps)


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


# ---------------------------------------------------------------- init_scale


@pytest.mark.parametrize("dims", [2, 3])
def test_small_init_scale_starts_near_identity_and_default_does_not(dims):
    x = torch.randn(2, 8, *([12] * dims), generator=torch.Generator().manual_seed(dims))
    ratios = {}
    for scale in (0.01, 1.0):
        torch.manual_seed(0)  # same draws for both blocks: only the scale differs
        block = UncertaintySelect(8, spatial_dims=dims, init_scale=scale)
        ratios[scale] = ((block(x) - x).abs().max() / x.abs().max()).item()
    # |y - x| = |x| (1 - H), and for M = 2 with logit difference d, 1 - H ~= d^2 / (8 ln 2). Scaling the last layer
    # by 0.01 makes |d| of order 1e-2 (the hidden map is batch-normalised: O(1) values, weights <= 1/sqrt(h)), so
    # 1 - H is of order 1e-4 at most; 1e-3 leaves a 10x margin. The default init gives d of order 1, 1 - H ~ 0.1.
    assert ratios[0.01] < 1e-3
    assert ratios[1.0] > 2e-2


def test_init_scale_multiplies_only_the_last_layer():
    torch.manual_seed(3)
    plain = UncertaintySelect(5, init_scale=1.0)
    torch.manual_seed(3)
    scaled = UncertaintySelect(5, init_scale=0.25)
    torch.testing.assert_close(scaled.head[-1].weight, 0.25 * plain.head[-1].weight)
    torch.testing.assert_close(scaled.head[-1].bias, 0.25 * plain.head[-1].bias)
    torch.testing.assert_close(scaled.head[0].weight, plain.head[0].weight)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, float("nan"), float("inf"), True, "0.1"])
def test_init_scale_errors(bad):
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0.*saddle"):
        UncertaintySelect(4, init_scale=bad)


# ---------------------------------------------------------------- auxiliary supervision


def test_keep_logits_holds_only_the_latest_non_detached_logits():
    block = UncertaintySelect(3)
    x = torch.randn(2, 3, 6, 6)
    block(x)
    assert block.last_logits is None  # off by default
    block.keep_logits = True
    block(x)
    first = block.last_logits
    torch.testing.assert_close(first, block.head(x))
    assert first.requires_grad and first.shape == (2, 2, 6, 6)
    block(torch.randn(1, 3, 4, 4))
    assert block.last_logits.shape == (1, 2, 4, 4)  # replaced, not appended
    block.keep_logits = False
    block(x)
    assert block.last_logits is None


def test_composition_targets_by_hand_on_a_4x4_map():
    labels = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [0, 0, 0, 1],
                           [1, 0, 0, 1]])[None]
    q = composition_targets(labels, 2, (2, 2))
    # foreground fraction of each 2x2 block, counted by hand
    expected_fg = torch.tensor([[0.0, 1.0], [0.25, 0.5]])
    torch.testing.assert_close(q[0, 1], expected_fg)
    torch.testing.assert_close(q[0, 0], 1 - expected_fg)


@pytest.mark.parametrize("dims,size,grid", [(2, (5, 7), (2, 3)), (3, (5, 6, 7), (2, 4, 3)), (3, (4, 4, 4), (4, 2, 1))])
def test_composition_targets_match_a_loop_over_blocks(dims, size, grid):
    g = torch.Generator().manual_seed(sum(size))
    labels = torch.randint(0, 3, (2, *size), generator=g)
    q = composition_targets(labels, 3, grid, dtype=torch.float64)
    assert q.shape == (2, 3, *grid)
    expected = torch.zeros_like(q)
    for index in itertools.product(*[range(n) for n in grid]):
        # location i covers floor(i * S / g) .. ceil((i + 1) * S / g) - 1 on each axis
        block = tuple(slice(i * s // n, -(-(i + 1) * s // n)) for i, s, n in zip(index, size, grid))
        for b in range(2):
            patch = labels[b][block]
            for c in range(3):
                expected[(b, c, *index)] = (patch == c).double().mean()
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(1), torch.ones(2, *grid, dtype=torch.float64))


def _hand_aux_example():
    labels = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [0, 0, 0, 1],
                           [1, 0, 0, 1]])[None]
    # logits (background, foreground) on the 2x2 grid
    logits = torch.tensor([[[0.0, 1.0], [2.0, -0.5]],
                           [[0.0, -1.0], [0.0, 0.5]]], dtype=torch.float64)[None]
    # -sum_m q_m log p_m per location with q_fg = [[0, 1], [1/4, 1/2]]; with d = z_fg - z_bg,
    # -log p_fg = log(1 + e^-d), -log p_bg = log(1 + e^d)
    per_location = [
        math.log(2.0),                                                           # q = (1, 0), d = 0
        math.log(1 + math.e**2),                                                 # q = (0, 1), d = -2
        0.75 * math.log(1 + math.e**-2) + 0.25 * math.log(1 + math.e**2),        # q = (3/4, 1/4), d = -2
        0.5 * math.log(1 + math.e**1) + 0.5 * math.log(1 + math.e**-1),          # q = (1/2, 1/2), d = 1
    ]
    return logits, labels, sum(per_location) / 4


def test_head_aux_loss_equals_a_hand_computation():
    logits, labels, expected = _hand_aux_example()
    assert head_aux_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)
    assert uafs_aux_loss([logits, logits], labels).item() == pytest.approx(expected, rel=1e-12)


def test_uafs_aux_loss_averages_heads_of_different_grids():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (2, 8, 8), generator=g)
    fine, coarse = torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 2, 3, 3, generator=g)
    expected = (head_aux_loss(fine, labels) + head_aux_loss(coarse, labels)) / 2
    torch.testing.assert_close(uafs_aux_loss([fine, coarse], labels), expected)


def test_aux_gradient_reaches_the_first_and_last_conv_of_the_head():
    torch.manual_seed(0)
    block = UncertaintySelect(4, init_scale=0.01)
    block.keep_logits = True
    block(torch.randn(2, 4, 8, 8))
    labels = torch.randint(0, 2, (2, 16, 16))  # the block works at stride 2
    head_aux_loss(block.last_logits, labels).backward()
    for param in (block.head[0].weight, block.head[-1].weight, block.head[-1].bias):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: head_aux_loss(torch.randn(1, 2, 2, 2), torch.full((1, 4, 4), 2)), r"\[2, 2\].*M=2.*uafs.branches"),
        (lambda: head_aux_loss(torch.randn(1, 2, 2, 2), torch.rand(1, 4, 4)), "integer tensor"),
        (lambda: head_aux_loss(torch.randn(2, 2, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long)), "do not fit labels"),
        (lambda: uafs_aux_loss([], torch.zeros(1, 4, 4, dtype=torch.long)), "non-empty list.*keep_logits"),
        (lambda: uafs_aux_loss([torch.randn(1, 2, 2, 2), torch.randn(1, 3, 2, 2)], torch.zeros(1, 4, 4, dtype=torch.long)),
         "same M"),
        (lambda: composition_targets(torch.zeros(1, 4, 4, dtype=torch.long), 2, (2,)), "size must give 2"),
    ],
)
def test_aux_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_aux_supervision_makes_h_an_uncertainty():
    """A head trained only by the auxiliary loss: H low where the class is easy, high in the boundary band."""
    from dragsaw.metrics import error_auroc

    torch.manual_seed(0)
    block = UncertaintySelect(1, hidden=8, init_scale=0.01)
    block.keep_logits = True
    optimizer = torch.optim.Adam(block.head.parameters(), lr=0.05)

    def sample(n):
        x = torch.randn(n, 1, 32, 32)
        labels = (x[:, 0] + 0.3 * torch.randn(n, 32, 32) > 0).long()  # class = sign of the input, plus label noise
        return x, labels

    for _ in range(40):
        x, labels = sample(4)
        block(x)
        loss = head_aux_loss(block.last_logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    block.eval()
    x, labels = sample(8)
    with torch.no_grad():
        h = block.uncertainty(x)[:, 0]
        wrong_pred = block.head(x).argmax(1)
    easy, band = x[:, 0].abs() > 1.5, x[:, 0].abs() < 0.2
    assert h[easy].mean() < 0.5 * h[band].mean()
    assert h[band].mean() > 0.5
    assert error_auroc(h, wrong_pred, labels) > 0.75
