"""Checks every registered network must pass: shapes on odd sizes, gradients, the host description (tap and
UAFS names, channels, strides), wrap-ability of the UAFS points, state-dict round trips and input checks."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from dragsaw.errors import DataError
from dragsaw.models import available_models

from ._cases import CASES, IDS, NUM_CLASSES, PARAMS, SIZES, build, main_output, sample, size


def test_every_registered_model_has_a_tiny_case():
    assert {name for name, _, _ in CASES.values()} == set(available_models())


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_forward_returns_logits_of_the_input_size(case, dims):
    model = build(case, dims)
    x = sample(dims, case=case)
    out = main_output(model(x))
    assert out.shape == (2, NUM_CLASSES, *size(case, dims))
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        single = model(x[:1])
    assert single.shape == (1, NUM_CLASSES, *size(case, dims))


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_backward_reaches_every_parameter(case, dims):
    model = build(case, dims)
    out = model(sample(dims, case=case))
    outputs = out if isinstance(out, list) else [out]
    generator = torch.Generator().manual_seed(3)
    # random weights: a plain sum would cancel through batch norm
    loss = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outputs)
    loss.backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _record(model: nn.Module, names: list[str]) -> tuple[dict[str, list[torch.Tensor]], list]:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen[name].append(o))
        for name in names
    ]
    return seen, handles


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_declared_taps_have_the_declared_channels_and_strides(case, dims):
    model = build(case, dims)
    taps = model.pdcr_taps()
    points = model.uafs_points()
    assert {t.role for t in taps} == {"encoder", "decoder"} or all(t.role == "encoder" for t in taps)
    names = sorted({t.name for t in taps} | {name for name, _ in points})
    seen, handles = _record(model, names)
    x = sample(dims, case=case)
    model(x)
    for handle in handles:
        handle.remove()
    size = x.shape[2:]
    for tap in taps:
        assert len(seen[tap.name]) == 1, f"{tap.name} ran {len(seen[tap.name])} times"
        feature = seen[tap.name][0]
        assert len(tap.stride) == dims
        expected = tuple(math.ceil(s / st) for s, st in zip(size, tap.stride))
        assert feature.shape == (2, tap.channels, *expected), tap
    for name, channels in points:
        assert len(seen[name]) == 1
        assert seen[name][0].shape[1] == channels, name
    tap_names = {t.name for t in taps}
    for first, second in model.pdcr_cross():
        assert first in tap_names and second in tap_names and first != second


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _wrap(model: nn.Module, name: str, block: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Sequential(getattr(parent, child), block))


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_uafs_points_can_be_wrapped_and_feed_the_output(case, dims):
    model = build(case, dims).eval()
    x = sample(dims, batch=1, case=case)
    description = (model.pdcr_taps(), model.pdcr_cross(), model.uafs_points())
    with torch.no_grad():
        reference = main_output(model(x))
        for name, _ in model.uafs_points():
            _wrap(model, name, nn.Identity())  # Sequential(module, block) must accept the module's input
        assert torch.equal(main_output(model(x)), reference)
        assert (model.pdcr_taps(), model.pdcr_cross(), model.uafs_points()) == description
        for name, _ in model.uafs_points():
            _wrap(model, name, _Scale(0.0))
            changed = main_output(model(x))
            _wrap(model, name, _Scale(float("nan")))  # poison it for good: every later point must still matter
            assert not torch.allclose(changed, reference), f"zeroing {name} does not change the output"


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_state_dict_round_trip_gives_identical_outputs(case, dims):
    source = build(case, dims, seed=0).eval()
    target = build(case, dims, seed=1).eval()
    x = sample(dims, batch=1, case=case)
    with torch.no_grad():
        assert not torch.equal(source(x), target(x))
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(source(x), target(x))


@pytest.mark.parametrize(("case", "dims"), PARAMS, ids=IDS)
def test_construction_is_deterministic_under_a_seed(case, dims):
    first, second = build(case, dims, seed=5).state_dict(), build(case, dims, seed=5).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_inputs_raise_data_errors(case):
    dims = CASES[case][2][0]
    model = build(case, dims)
    with pytest.raises(DataError, match="in_channels=3"):
        model(torch.zeros(2, 1, *SIZES[dims]))
    with pytest.raises(DataError, match=f"spatial_dims={dims}"):
        model(torch.zeros(2, 3, *SIZES[dims], 5))
