"""Fuzzing the 2D readers: each call returns a correct result or raises ValueError, nothing else.

Oracles are independent of the code under test: the arrays written to disk, with the documented value policies
applied by hand. DataError and ConfigError subclass ValueError, so ``except ValueError`` admits exactly the
documented failures; any other exception fails the test, and so does a result that differs from the oracle.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from dragsaw.data.io.images import read_image, read_mask

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
