"""Fuzzing the readers and label_composition: each call returns a correct result or raises ValueError, nothing else.

Oracles are independent of the code under test: the arrays written to disk (for the readers, with the documented
value policies applied by hand) and a naive per-location loop (for ``label_composition``). DataError and
ConfigError subclass ValueError, so ``except ValueError`` admits exactly the documented failures; any other
exception fails the test, and so does a result that differs from the oracle.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from dragsaw.data.io2d import read_image, read_mask
from dragsaw.pdcr import label_composition

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def attempt(fn, *args, **kwargs):
    """``(result, None)`` or ``(None, ValueError)``; any other exception propagates and fails the test."""
    try:
        return fn(*args, **kwargs), None
    except ValueError as exc:
        return None, exc


# ------------------------------------------------------------------ random bytes
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF blocks in random TIFFs
@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp"]),
       prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"BM"]))
def test_random_bytes_raise_value_error(data: bytes, suffix: str, prefix: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(prefix + data)
        image, err = attempt(read_image, path)
        if err is None:  # bytes that happen to decode must still give a well-formed image
            assert image.dtype == np.float32 and image.ndim == 3 and 0.0 <= image.min() <= image.max() <= 1.0
        else:
            assert str(path) in str(err)  # names the file
        mask, err = attempt(read_mask, path, 2)
        if err is None:
            assert mask.dtype == np.int64 and mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 1}
        else:
            assert str(path) in str(err)


@FUZZ
@given(seed=st.integers(0, 2**16), cut=st.floats(0.0, 1.0), fmt=st.sampled_from(["PNG", "JPEG"]))
def test_truncated_files_raise_or_decode_exactly(seed: int, cut: float, fmt: str):
    """A cut file either fails with ValueError or (cut after the pixel data) decodes to the complete result."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (int(rng.integers(1, 12)), int(rng.integers(1, 12)), 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.png" if fmt == "PNG" else "x.jpg")
        Image.fromarray(arr).save(path, format=fmt)
        full = read_image(path)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
        out, err = attempt(read_image, path)
        if err is None:
            np.testing.assert_array_equal(out, full)


# ------------------------------------------------------------------ arrays written by Pillow
KINDS = ["L", "LA", "RGB", "RGB_gray", "RGBA", "1", "I;16", "I", "F", "P"]


@st.composite
def stored_arrays(draw):
    """``(kind, array, palette)``: what is written to disk; values from a small alphabet half of the time."""
    kind = draw(st.sampled_from(KINDS))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    alphabet = draw(st.sampled_from([None, (0, 1), (0, 255), (0, 1, 2), (0, 128, 255), (0, 1000), (-3, 0, 70000)]))
    info = {"L": (np.uint8, (h, w)), "LA": (np.uint8, (h, w, 2)), "RGB": (np.uint8, (h, w, 3)),
            "RGB_gray": (np.uint8, (h, w)), "RGBA": (np.uint8, (h, w, 4)), "1": (bool, (h, w)),
            "I;16": (np.uint16, (h, w)), "I": (np.int32, (h, w)), "F": (np.float32, (h, w)), "P": (np.uint8, (h, w))}
    dtype, shape = info[kind]
    if dtype is bool:
        arr = rng.random(shape) < 0.5
    elif dtype is np.float32:
        arr = rng.standard_normal(shape).astype(np.float32)
    else:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        if alphabet is None:
            arr = rng.integers(lo, int(hi) + 1, shape, dtype=np.int64)
        else:
            arr = rng.choice(np.clip(np.array(alphabet), lo, hi), shape)
        arr = arr.astype(dtype)
    if kind == "RGB_gray":
        arr = np.stack([arr] * 3, -1)
    palette = rng.integers(0, 256, 768, dtype=np.uint8) if kind == "P" else None
    return kind, arr, palette


def write(path: Path, kind: str, arr: np.ndarray, palette: np.ndarray | None) -> Path:
    im = Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette.tobytes())
    im.save(path)
    return path


def expected_image(kind: str, arr: np.ndarray, palette: np.ndarray | None) -> np.ndarray | None:
    """What read_image must return (None: it must raise)."""
    if kind == "F" or (kind == "I" and (arr.min() < 0 or arr.max() > 65535)):
        return None
    if kind in ("RGB", "RGB_gray", "RGBA"):
        return arr[..., :3].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    if kind == "P":
        return palette.reshape(256, 3)[arr].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    plane = arr[..., 0] if kind == "LA" else arr
    scale = {"1": 1, "L": 255, "LA": 255, "I;16": 65535, "I": 65535}[kind]
    return plane[None].astype(np.float32) / np.float32(scale)


def expected_mask(kind: str, arr: np.ndarray, num_classes: int, value_map: dict | None) -> np.ndarray | None:
    """What read_mask must return by the documented policies (None: it must raise)."""
    if kind == "F":
        return None
    if kind in ("RGB", "RGB_gray", "RGBA"):
        rgb = arr[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            return None
    values = (arr[..., 0] if arr.ndim == 3 else arr).astype(np.int64)
    present = set(np.unique(values).tolist())
    if value_map is not None:
        if not present <= set(value_map):
            return None
        out = np.zeros_like(values)
        for key, cls in value_map.items():
            out[values == key] = cls
        return out
    if num_classes == 2 and present <= {0, 1}:
        return values
    if num_classes == 2 and present <= {0, 255}:
        return (values == 255).astype(np.int64)
    if num_classes > 2 and present <= set(range(num_classes)):
        return values
    return None


@FUZZ
@given(stored=stored_arrays())
def test_read_image_matches_the_stored_array(stored):
    kind, arr, palette = stored
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / ("x.tif" if kind in ("I", "F") else "x.png"), kind, arr, palette)
        out, err = attempt(read_image, path)
    want = expected_image(kind, arr, palette)
    event(f"read_image: {'refused' if want is None else 'compared'}")
    if want is None:
        assert err is not None, f"{kind}: expected a ValueError, got an array"
    else:
        assert err is None, f"{kind}: {err}"
        assert out.dtype == np.float32 and out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-7)


@FUZZ
@given(stored=stored_arrays(), num_classes=st.integers(2, 4),
       value_map=st.sampled_from([None, {0: 0, 255: 1}, {0: 0, 128: 1, 255: 2}, {0: 0, 1000: 1}, {-3: 1, 0: 0}]))
def test_read_mask_matches_the_policies(stored, num_classes: int, value_map):
    kind, arr, palette = stored
    if value_map is not None and max(value_map.values()) >= num_classes:
        value_map = None
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / ("x.tif" if kind in ("I", "F") else "x.png"), kind, arr, palette)
        out, err = attempt(read_mask, path, num_classes, value_map)
    want = expected_mask(kind, arr, num_classes, value_map)
    event(f"read_mask: {'refused' if want is None else 'compared'}")
    if want is None:
        assert err is not None, f"{kind}: expected a ValueError, got values {np.unique(out)}"
        assert str(path) in str(err)
    else:
        assert err is None, f"{kind}: {err}"
        assert out.dtype == np.int64 and out.min() >= 0 and out.max() < num_classes
        np.testing.assert_array_equal(out, want)


@FUZZ
@given(seed=st.integers(0, 2**16), fg=st.sampled_from([1, 128, 255]))
def test_jpeg_masks_are_thresholded(seed: int, fg: int):
    rng = np.random.default_rng(seed)
    arr = (rng.random((int(rng.integers(1, 17)), int(rng.integers(1, 17)))) < 0.4).astype(np.uint8) * fg
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = Path(tmp) / "m.jpg"
        Image.fromarray(arr).save(path, quality=90)
        with Image.open(path) as im:
            stored = np.asarray(im)
        np.testing.assert_array_equal(read_mask(path, 2), (stored >= 128).astype(np.int64))
        assert attempt(read_mask, path, 3)[1] is not None  # lossy masks only for binary tasks


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
