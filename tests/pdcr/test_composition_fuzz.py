"""Fuzzing label_composition: each call returns a correct result or raises ValueError, nothing else.

The oracle is independent of the code under test: a naive per-location loop. DataError and ConfigError subclass
ValueError, so ``except ValueError`` admits exactly the documented failures; any other exception fails the test,
and so does a result that differs from the oracle.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dragsaw.pdcr import label_composition

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def attempt(fn, *args, **kwargs):
    """``(result, None)`` or ``(None, ValueError)``; any other exception propagates and fails the test."""
    try:
        return fn(*args, **kwargs), None
    except ValueError as exc:
        return None, exc


# ------------------------------------------------------------------ label_composition
def naive_composition(labels: np.ndarray, k: int, stride, patch, ignore) -> np.ndarray:
    """Per-location loop over the definition (METHOD.md section 0)."""
    size = labels.shape[1:]
    grid = [-(-s // st_) for s, st_ in zip(size, stride)]
    out = np.zeros((labels.shape[0], k, *grid), np.float64)
    for b in range(labels.shape[0]):
        for idx in itertools.product(*(range(g) for g in grid)):
            box = []
            for i, s, p, n in zip(idx, stride, patch, size):
                start = i * s - (p - s) // 2
                box.append(slice(min(max(start, 0), n), min(max(start + p, 0), n)))
            values = labels[b][tuple(box)].ravel()
            values = values[(values >= 0) & (values < k) & (values != (ignore if ignore is not None else -10**9))]
            if values.size:
                out[(b, slice(None), *idx)] = np.bincount(values, minlength=k) / values.size
    return out


BROKEN = ["dtype", "values", "k", "stride", "patch", "length", "numpy"]


@st.composite
def composition_args(draw, broken_choices: list):
    """Random arguments; ``broken`` (drawn from ``broken_choices``) names the one argument made invalid (dtype,
    values, K, stride, patch, a per-axis tuple of the wrong length, a numpy array), None for valid arguments."""
    broken = draw(st.sampled_from(broken_choices))
    dims = draw(st.integers(1, 3))
    size = [draw(st.integers(1, 7)) for _ in range(dims)]
    k = 0 if broken == "k" else draw(st.integers(1, 4))
    ints = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8]
    dtype = draw(st.sampled_from([torch.bool, torch.float32] if broken == "dtype" else ints))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 2))
    values = rng.integers(0, max(k, 1), (batch, *size))
    ignore = draw(st.sampled_from([None, 0, 1, k, 100] + ([] if dtype in (torch.uint8, torch.bool) else [-1])))
    if ignore is not None:  # put some ignored pixels in
        values[rng.random(values.shape) < 0.3] = ignore
    if broken == "values":  # a value that is neither a class nor ignore_index
        candidates = [k, k + 1] + ([] if dtype == torch.uint8 else [-1, -2])
        values.flat[int(rng.integers(values.size))] = draw(st.sampled_from([v for v in candidates if v != ignore]))
    if dtype == torch.bool:
        values = values.clip(0, 1)

    def per_axis(is_broken: bool):
        good = st.integers(1, 5)
        if is_broken:
            return draw(st.sampled_from([0, -1, (0,) * dims, True]))
        if broken == "length":
            return draw(st.lists(good, min_size=dims + 1, max_size=dims + 2).map(tuple))
        return draw(st.one_of(good, st.lists(good, min_size=dims, max_size=dims).map(tuple)))

    stride, patch = per_axis(broken == "stride"), per_axis(broken == "patch")
    layout = "numpy" if broken == "numpy" else draw(st.sampled_from(["contiguous", "step", "transposed"]))
    return values, dtype, k, stride, patch, ignore, layout


def make_labels(values: np.ndarray, dtype: torch.dtype, layout: str):
    """The labels as a tensor with the requested memory layout (same logical values)."""
    if layout == "numpy":
        return values
    t = torch.as_tensor(values).to(dtype)
    if layout == "step":  # a strided view of a larger tensor
        big = torch.zeros((t.shape[0], *(2 * s for s in t.shape[1:])), dtype=dtype)
        view = big[(slice(None), *(slice(None, None, 2) for _ in t.shape[1:]))]
        view.copy_(t)
        return view
    if layout == "transposed":  # a permuted, non-contiguous view
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


def check_composition(args) -> bool:
    """Call label_composition; compare with the naive loop or require a ValueError. Returns "was valid"."""
    values, dtype, k, stride, patch, ignore, layout = args
    labels = make_labels(values, dtype, layout)
    out, err = attempt(label_composition, labels, k, stride, patch, ignore_index=ignore)
    dims = values.ndim - 1
    per = [s if isinstance(s, tuple) else (s,) * dims for s in (stride, patch)]
    valid_values = (values >= 0) & (values < k)
    if ignore is not None:
        valid_values |= values == ignore
    valid = (layout != "numpy" and dtype not in (torch.bool, torch.float32) and k >= 1 and bool(valid_values.all())
             and all(len(p) == dims and min(p) >= 1 and not isinstance(p[0], bool) for p in per))
    if not valid:
        assert err is not None, f"expected ValueError, got a result of shape {tuple(out.shape)}"
        return False
    assert err is None, str(err)
    want = naive_composition(values, k, *per, ignore)
    assert out.dtype == torch.float32 and tuple(out.shape) == want.shape
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-6)
    return True


@FUZZ
@given(args=composition_args([None]))
def test_label_composition_matches_naive_loop(args):
    assert check_composition(args)
    event(f"label_composition: {args[0].ndim - 1}D, {args[1]}, {args[6]}")


@FUZZ
@given(args=composition_args(BROKEN))
def test_label_composition_refuses_bad_arguments(args):
    assert not check_composition(args)


def test_label_composition_ignore_index_does_not_alias():
    # labels are widened before comparison: a uint8 255 is not ignore_index=-1 (nor an int8 -1 ignore_index=255)
    labels = torch.tensor([[0, 1, 255]], dtype=torch.uint8)  # 255 is not a class of a 2-class task
    out, err = attempt(label_composition, labels, 2, 1, 1, ignore_index=-1)
    assert err is not None, f"255 treated as ignore_index=-1: {out.tolist()}"
