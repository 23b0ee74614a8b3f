"""``dragsaw taps``: the configuration's taps as the training network has them, and the host's maps by stride."""

from __future__ import annotations

import re

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine.build import build_network

from _cli import FAST2D, run_cli, sets


def test_taps_prints_the_training_networks_taps_and_the_maps_by_stride():
    overrides = [*FAST2D, "pdcr.layers={encoder.1: encoder, encoder.2: encoder, decoder.1: decoder}",
                 "pdcr.cross_layers=[[encoder.1, encoder.2]]"]
    result = run_cli(["taps", "--preset", "folder", "--profile", "cpu", "--in-channels", "1", *sets(overrides)])
    assert result.code == 0, result.err
    net = build_network(apply_overrides(load_preset("folder", "cpu"), overrides), 1)
    printed = re.findall(r"^  (\S+)\s+(encoder|decoder)\s+channels (\d+)\s+stride (\S+)$", result.out, re.M)
    assert printed == [(t.name, t.role, str(t.channels), "x".join(map(str, t.stride))) for t in net.taps]
    assert [n for n, *_ in printed] == ["encoder.1", "encoder.2", "decoder.1"]
    assert "PDCR cross-layer pairs: [['encoder.1', 'encoder.2']]" in result.out
    assert f"UAFS after: {net.uafs_points}" in result.out
    params = sum(p.numel() for p in net.model.parameters())
    assert f"(2D, {params:,} parameters with UAFS) on an input [1, 1, *[32, 32]]" in result.out
    # the table agrees with the probed taps: each tapped module's row has its channels and stride
    for name, role, channels, stride in printed:
        row = re.search(rf"^\s+\d+\s+\*?\s*{re.escape(name)}\s+(\w+)\s+(\d+)\s+(\S+)\s", result.out, re.M)
        assert row is not None, name
        assert row.group(1) in (role, "bottleneck")  # the coarsest map is the bottleneck whatever role it is given
        assert (row.group(2), row.group(3)) == (channels, stride)


def test_taps_reports_bad_configuration_like_train():
    result = run_cli(["taps", "--preset", "folder", "--profile", "cpu", *sets(
        [*FAST2D, "pdcr.layers={encoder.9: encoder}"])])
    assert result.code == 2
    assert "pdcr.layers names 'encoder.9', which is not a submodule of unet" in result.message
