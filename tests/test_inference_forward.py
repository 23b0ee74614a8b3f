"""``infer`` on hand-made 2D models (exact logits of a known 1x1 convolution; the uncertainty channel of a UAFS block
against the normalised entropy of its head computed here), ``finest_uncertainty`` and ``record_uncertainty``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dragsaw.inference import InferenceSettings, finest_uncertainty, infer, record_uncertainty
from dragsaw.uafs import UncertaintySelect


def _conv1x1(weight: list[list[float]], bias: list[float]) -> nn.Conv2d:
    w = torch.tensor(weight)
    conv = nn.Conv2d(w.shape[1], w.shape[0], 1)
    with torch.no_grad():
        conv.weight.copy_(w[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias))
    return conv


def test_infer_2d_returns_the_logits_of_a_known_1x1_conv_exactly():
    model = _conv1x1([[1, -2], [0, 3], [2, 1]], [1, 0, -4]).eval()
    x = torch.randint(-3, 4, (2, 2, 4, 5)).float()  # small integers: every product and sum is exact in float32
    logits, unc = infer(model, x, InferenceSettings())
    want = torch.stack([
        x[:, 0] - 2 * x[:, 1] + 1,
        3 * x[:, 1],
        2 * x[:, 0] + x[:, 1] - 4,
    ], dim=1)
    assert unc is None  # no UAFS block, no map
    assert logits.dtype == torch.float32 and logits.shape == (2, 3, 4, 5)
    assert torch.equal(logits, want)


class _WithUafs(nn.Module):
    """1x1 conv (2 -> 4 channels), a UAFS block at full resolution, 1x1 conv (4 -> 3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Conv2d(2, 4, 1)
        self.uafs = UncertaintySelect(4, spatial_dims=2, branches=2)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.out(self.uafs(self.inp(x)))


def test_infer_2d_with_uafs_returns_the_blocks_entropy_map():
    model = _WithUafs().eval()
    x = 3 * torch.randn(2, 2, 6, 7, generator=torch.Generator().manual_seed(1))
    logits, unc = infer(model, x, InferenceSettings())
    with torch.no_grad():  # by hand: H = -sum p log p / log M of the head, y = x (2 - H)
        f = model.inp(x)
        p = torch.softmax(model.uafs.head(f).double(), dim=1)
        h = -(p * torch.log(p)).sum(1, keepdim=True) / math.log(2)
        want_logits = model.out(f * (2 - h.float()))
    assert unc.shape == (2, 1, 6, 7) and logits.shape == (2, 3, 6, 7)
    assert 0.0 <= float(unc.min()) and float(unc.max()) <= 1.0
    assert float(unc.max() - unc.min()) > 0.05  # a map with structure, not a constant
    # plain comparisons: the first torch.testing.assert_close of a process spends seconds importing
    assert float((unc.double() - h).abs().max()) < 1e-5
    assert float((logits - want_logits).abs().max()) < 1e-5
    assert model.uafs.record is False and model.uafs.last_uncertainty is None  # recording switched off after


class _Blocks(nn.Module):
    def __init__(self, first: str) -> None:
        super().__init__()
        names = ["fine", "coarse"] if first == "fine" else ["coarse", "fine"]
        self.blocks = nn.ModuleDict({name: UncertaintySelect(4) for name in names})


@pytest.mark.parametrize("first", ["fine", "coarse"])
def test_finest_uncertainty_picks_the_map_of_most_pixels(first):
    model = _Blocks(first)
    assert finest_uncertainty(model, (4, 4)) is None  # nothing recorded
    fine = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4) / 20
    model.blocks["fine"].last_uncertainty = fine
    model.blocks["coarse"].last_uncertainty = torch.full((1, 1, 2, 2), 0.9)
    got = finest_uncertainty(model, (4, 4))
    assert torch.equal(got, fine)  # the 4x4 map, at its own size: unchanged
    model.blocks["fine"].last_uncertainty = torch.full((1, 1, 4, 4), 0.25)
    up = finest_uncertainty(model, (8, 12))
    assert up.shape == (1, 1, 8, 12) and torch.equal(up, torch.full((1, 1, 8, 12), 0.25))  # resized, not the 0.9


def test_record_uncertainty_switches_every_block_and_counts_them():
    model = nn.Sequential(UncertaintySelect(3), nn.Sequential(UncertaintySelect(3), nn.Identity()),
                          UncertaintySelect(3)).eval()
    blocks = [m for m in model.modules() if isinstance(m, UncertaintySelect)]
    assert record_uncertainty(nn.Conv2d(1, 1, 1)) == 0
    assert record_uncertainty(model) == 3  # on by default
    assert all(b.record for b in blocks)
    with torch.no_grad():
        model(torch.randn(1, 3, 5, 5))
    assert all(b.last_uncertainty is not None and b.last_uncertainty.shape == (1, 1, 5, 5) for b in blocks)
    assert record_uncertainty(model, False) == 3
    assert all(not b.record and b.last_uncertainty is None for b in blocks)  # off also drops the kept maps
    with torch.no_grad():
        model(torch.randn(1, 3, 5, 5))
    assert all(b.last_uncertainty is None for b in blocks)
