"""The hosts together with the core plumbing: UAFS inserted at every declared point with ``insert_after``,
PDCR features collected with ``FeatureTaps``, and tap geometry measured with ``receptive_field``."""

from __future__ import annotations

import math

import pytest

from ._cases import CASES, NUM_CLASSES, build, main_output, sample, size

taps = pytest.importorskip("dragsaw.taps")
uafs = pytest.importorskip("dragsaw.uafs")

CASES_2D = [case for case, (_, _, dims) in CASES.items() if 2 in dims]


@pytest.mark.parametrize("case", CASES_2D)
def test_uafs_at_every_point_and_pdcr_taps_work_together(case):
    model = build(case, 2)
    points = model.uafs_points()
    specs = model.pdcr_taps()
    for name, channels in points:
        taps.insert_after(model, name, uafs.UncertaintySelect(channels, spatial_dims=2))
    assert model.pdcr_taps() == specs and model.uafs_points() == points
    x = sample(2, case=case)
    with taps.FeatureTaps(model, [s.name for s in specs]) as collector:
        out = main_output(model(x))
        features = collector.pop()
    assert out.shape == (2, NUM_CLASSES, *size(case, 2))
    for spec in specs:
        expected = tuple(math.ceil(s / st) for s, st in zip(size(case, 2), spec.stride))
        assert features[spec.name].shape == (2, spec.channels, *expected)
    loss = out.square().mean() + sum(f.square().mean() for f in features.values())
    loss.backward()
    for name, _ in points:  # the inserted heads learn through the loss
        head = model.get_submodule(f"{name}.1")
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), name


@pytest.mark.parametrize(
    ("case", "sizes"),
    [("deeplab-xception", (7, 19)), ("deeplab-resnet18", (7, 43)), ("unet", (14, 32))],
)
def test_measured_encoder_tap_geometry_matches_the_declaration(case, sizes):
    model = build(case, 2)
    encoder = [s for s in model.pdcr_taps() if s.role == "encoder"]
    for spec, extent in zip(encoder, sizes, strict=True):
        field = taps.receptive_field(model, spec.name, (1, 3, 96, 96))
        assert field.stride == spec.stride
        assert field.size == (extent, extent)  # Xception: 7 and 19, as METHOD.md reports for the reference
        # same-padded strided convs centre location i on pixel i*s; max pooling covers the block [i*s, i*s+s-1]
        offset = 0.0 if case.startswith("deeplab") else (spec.stride[0] - 1) / 2
        assert field.center_offset == (offset, offset)
