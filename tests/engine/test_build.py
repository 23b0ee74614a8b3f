"""Network assembly from a configuration: UAFS insertion points, PDCR taps, weights and errors."""

from __future__ import annotations

import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import build_network
from dragsaw.errors import ConfigError
from dragsaw.taps import FeatureTaps
from dragsaw.uafs import UncertaintySelect


def cfg(*overrides):
    return apply_overrides(load_preset("folder", "cpu"), ["model.options.channels=[4, 8, 16, 32]", *overrides])


def test_full_model_has_uafs_at_declared_points_and_pdcr_on_declared_taps():
    net = build_network(cfg(), in_channels=3)
    blocks = {n for n, m in net.model.named_modules() if isinstance(m, UncertaintySelect)}
    assert blocks == {f"{p}.1" for p in net.uafs_points} and len(blocks) == 2  # decoder stages below full res
    assert net.pdcr is not None
    assert net.pdcr.layer_weights == {"encoder.1": 0.1, "encoder.2": 0.1, "decoder.1": 0.01, "decoder.2": 0.01}
    assert net.pdcr.samples == {"encoder.1": 64, "encoder.2": 32, "decoder.1": 32, "decoder.2": 8}
    assert net.pdcr.cross_layers == [("encoder.1", "encoder.2")]
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 2, (2, 64, 64))
    with FeatureTaps(net.model, net.tap_names) as taps:
        logits = net.model(x)
        out = net.pdcr(taps.pop(), labels, net.strides)
    assert logits.shape == (2, 2, 64, 64) and torch.isfinite(out.total)


def test_switches_and_overrides():
    base = build_network(cfg("pdcr.enabled=false", "uafs.enabled=false"), in_channels=1)
    assert base.pdcr is None and base.uafs_points == []
    assert not any(isinstance(m, UncertaintySelect) for m in base.model.modules())
    custom = build_network(cfg("pdcr.layers={encoder.1: encoder}", "pdcr.encoder_weight=0.5", "uafs.points=[decoder.0]",
                               "uafs.branches=3"), in_channels=1)
    assert custom.pdcr.layer_weights == {"encoder.1": 0.5} and custom.pdcr.cross_layers == []
    assert custom.uafs_points == ["decoder.0"] and custom.model.get_submodule("decoder.0.1").branches == 3


@pytest.mark.parametrize(
    "override,match",
    [
        ("uafs.points=[encoder.9]", "uafs.points names 'encoder.9'"),
        ("pdcr.layers={enc.1: encoder}", "not a submodule"),
        ("pdcr.cross_layers=[[encoder.1, decoder.9]]", "untapped layers"),
        ("model.name=unett", "unett"),
    ],
)
def test_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        build_network(cfg(override), in_channels=1)
