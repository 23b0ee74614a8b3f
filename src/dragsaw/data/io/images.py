"""Reading 2D images and masks into arrays, with explicit policies for every stored value.

Images become float32 ``[C, H, W]`` in [0, 1]; masks become int64 ``[H, W]`` class indices ``0..K-1``. Any file
that cannot be decoded, and any mask value that no policy accounts for, raises :class:`~dragsaw.errors.DataError`
naming the file and the fix; nothing is guessed silently.

Mask policies (see :func:`read_mask`):

* binary masks stored as {0, 255} or {0, 1} (or all 0: an empty mask);
* lossy JPEG masks (suffix ``.jpg``/``.jpeg``, binary tasks only): thresholded at 128, with one warning per folder;
* multi-class masks: a ``value_map`` {stored value: class index}, or values (e.g. palette PNG indices) that already
  are class indices ``0..K-1``;
* colour masks whose channels are identical are read as grayscale; any other colour mask is refused.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from dragsaw.data.cases import Case
from dragsaw.data.io.files import require_file
from dragsaw.data.io.labels import check_value_map, map_mask_values
from dragsaw.errors import ConfigError, DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "JPEG_SUFFIXES",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "open_image",
    "read_image",
    "image_channels",
    "read_mask",
    "check_same_size",
    "read_case",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File suffixes (lower case) that the 2D adapters treat as images or masks."""

JPEG_SUFFIXES = (".jpg", ".jpeg")
"""Suffixes of lossy files whose masks are thresholded at 128."""

DEFAULT_MAX_PIXELS = 2**28
"""Largest image (width x height) dragsaw decodes unless ``DRAGSAW_MAX_PIXELS`` says otherwise: 268,435,456
pixels, e.g. 16384 x 16384. Decoding such an RGB image takes about 0.8 GB as bytes and 3.2 GB as the float32 array
training reads, so larger files are refused from their header, before any pixel is decoded. Pillow's own
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is not applied to the files dragsaw opens: this limit
replaces it (raise or lower it with the environment variable)."""

MAX_PIXELS_ENV = "DRAGSAW_MAX_PIXELS"
_PILLOW_LIMIT_LOCK = threading.Lock()

_JPEG_THRESHOLD = 128
_JPEG_WARNED_DIRS: set[Path] = set()

# Pillow mode -> channel count of the array read_image returns.
_IMAGE_CHANNELS = {
    "1": 1, "L": 1, "LA": 1, "I": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1,
    "P": 3, "PA": 3, "RGB": 3, "RGBA": 3, "RGBX": 3, "CMYK": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
}  # fmt: skip


def max_pixels() -> int:
    """The pixel limit (width x height) of the images dragsaw opens: ``DRAGSAW_MAX_PIXELS`` when set (a positive
    integer, e.g. ``DRAGSAW_MAX_PIXELS=500000000``), else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ConfigError: the environment variable is set but is not a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"the environment variable {MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a positive integer",
            fix=f"set it to the largest width x height to accept (default {DEFAULT_MAX_PIXELS}), or unset it",
        )
    return value


@contextmanager
def open_image(path: str | Path, what: str = "image") -> Iterator[Image.Image]:
    """Open ``path`` with Pillow (header only, nothing decoded) after checking its size against :func:`max_pixels`.

    Pillow's decompression-bomb check is off while the header is parsed (its error would be reported as a broken
    file, and its default limit is below dragsaw's); the size is then checked here, from the header.

    Raises:
        DataError: the image is larger than the limit (names the file, its size, the limit and how to raise it).
        Exception: whatever Pillow raises for a file that is not an image (callers turn it into a DataError).
    """
    path = Path(path)
    limit = max_pixels()
    with _PILLOW_LIMIT_LOCK:  # the limit is a Pillow global: restore it for other callers, whatever happens
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        width, height = im.size
        if width * height > limit:
            raise DataError(
                f"{what} file {path} is {width}x{height} pixels (WxH, {width * height:,} pixels), more than dragsaw's "
                f"limit of {limit:,} pixels (protection against files that would exhaust memory when decoded)",
                fix=f"if the image is genuine, raise the limit with the environment variable {MAX_PIXELS_ENV}, e.g. "
                f"{MAX_PIXELS_ENV}={width * height}, or downscale or tile the image",
            )
        yield im


def _decode(path: str | Path, what: str, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open ``path`` with Pillow, decode it fully and convert it while the file is open.

    Raises:
        DataError: the file is missing, empty, not an image, truncated, corrupt or has several frames.
    """
    path = require_file(path, what)
    try:
        with open_image(path, what) as im:
            if getattr(im, "n_frames", 1) != 1:
                raise DataError(
                    f"{what} file {path} has {im.n_frames} frames/pages", fix="save a single 2D image per file"
                )
            im.load()
            return convert(im)
    except (DataError, ConfigError):
        raise
    except Image.DecompressionBombError as exc:  # a plugin's own check while decoding (e.g. a huge TIFF tile)
        raise DataError(
            f"{what} file {path} was refused by Pillow's decompression-bomb limit while decoding ({exc})",
            fix="if the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS in your script, or downscale or tile the "
            "image",
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad files
        raise DataError(
            f"{what} file {path} cannot be decoded as an image ({type(exc).__name__}: {exc})",
            fix="check that it is a complete PNG/JPEG/BMP/TIFF file (re-download or re-export it)",
        ) from exc


def _image_array(im: Image.Image, path: Path) -> np.ndarray:
    """Pillow image -> float32 ``[C, H, W]`` in [0, 1] (see :func:`read_image`)."""
    mode = im.mode
    if mode == "1":
        arr = np.asarray(im, dtype=np.float32)[None]
    elif mode in ("L", "LA"):
        arr = np.asarray(im.getchannel(0), dtype=np.float32)[None] / 255.0
    elif mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32)[None] / 65535.0
    elif mode == "I":
        raw = np.asarray(im)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise DataError(
                f"image file {path} holds 32-bit integers in [{raw.min()}, {raw.max()}], outside 16-bit range",
                fix="save it as an 8- or 16-bit image",
            )
        arr = raw.astype(np.float32)[None] / 65535.0
    elif mode in _IMAGE_CHANNELS:  # colour modes; alpha is dropped
        arr = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    else:
        raise DataError(
            f"image file {path} has unsupported pixel mode {mode!r}", fix="save it as 8/16-bit grayscale or 8-bit RGB"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image as float32 scaled to [0, 1].

    8-bit files are divided by 255 and 16-bit files by 65535. Grayscale gives one channel; RGB, palette and other
    colour modes give three; an alpha channel is dropped (RGBA -> RGB, LA -> L).

    Args:
        path: Image file (PNG, JPEG, BMP, TIFF, ...).

    Returns:
        Array of shape ``[C, H, W]``, C in {1, 3}, dtype float32.

    Raises:
        DataError: missing, zero-byte, truncated, corrupt, non-image, multi-frame or float-valued files.
    """
    return _decode(path, "image", lambda im: _image_array(im, Path(path)))


def image_channels(path: str | Path) -> int:
    """Channel count :func:`read_image` will return for ``path``, from the file header only (no pixel decoding).

    Raises:
        DataError: the file is missing, empty, not an image, or has an unsupported pixel mode.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        read_image(path)  # raises the descriptive DataError
    try:
        with open_image(path) as im:
            mode = im.mode
    except (DataError, ConfigError):
        raise
    except Exception as exc:
        raise DataError(
            f"image file {path} cannot be opened as an image ({type(exc).__name__}: {exc})",
            fix="check that it is a complete PNG/JPEG/BMP/TIFF file",
        ) from exc
    if mode not in _IMAGE_CHANNELS:
        raise DataError(
            f"image file {path} has unsupported pixel mode {mode!r}", fix="save it as 8/16-bit grayscale or 8-bit RGB"
        )
    return _IMAGE_CHANNELS[mode]


def _mask_values(im: Image.Image, path: Path) -> np.ndarray:
    """Pillow image -> stored integer values ``[H, W]`` (palette indices for palette images)."""
    mode = im.mode
    if mode in ("1", "L", "P") or mode.startswith("I"):
        return np.asarray(im).astype(np.int64)
    if mode in ("LA", "PA"):
        return np.asarray(im)[..., 0].astype(np.int64)
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(im)[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise DataError(
                f"mask file {path} is a 3-channel mask whose colour channels differ; dragsaw reads class indices "
                "from single-channel masks",
                fix="save it as a single-channel (grayscale or palette) PNG with one value per class",
            )
        return rgb[..., 0].astype(np.int64)
    raise DataError(
        f"mask file {path} has pixel mode {mode!r}, which cannot hold class indices",
        fix="save it as a single-channel 8- or 16-bit PNG",
    )


def _warn_jpeg_once(path: Path) -> None:
    folder = path.parent.resolve()
    if folder in _JPEG_WARNED_DIRS:
        return
    _JPEG_WARNED_DIRS.add(folder)
    warnings.warn(
        f"mask file {path} is a lossy JPEG: its values are thresholded at {_JPEG_THRESHOLD} (>= {_JPEG_THRESHOLD} "
        f"-> foreground); the other JPEG masks in {folder} are thresholded the same way without another warning. "
        "Save masks as PNG to avoid compression artefacts at the border.",
        UserWarning,
        stacklevel=3,
    )


def read_mask(path: str | Path, num_classes: int = 2, value_map: Mapping[int, int] | None = None) -> np.ndarray:
    """Read a 2D mask as class indices, applying the module's value policies.

    Args:
        path: Mask file. JPEG masks (``.jpg``/``.jpeg``) are thresholded at 128 with a warning (once per folder);
            they are accepted only for binary tasks without ``value_map``.
        num_classes: K, background included (2 for binary segmentation).
        value_map: Optional {stored value: class index} for multi-class masks (or binary masks stored with other
            values). Palette PNGs are read as their palette indices.

    Returns:
        int64 array ``[H, W]`` with values in ``0..K-1``.

    Raises:
        ConfigError: invalid ``num_classes`` or ``value_map``.
        DataError: unreadable file, multi-coloured 3-channel mask, or stored values no policy accounts for.
    """
    path = Path(path)
    check_value_map(value_map, num_classes)
    values = _decode(path, "mask", lambda im: _mask_values(im, path))
    if path.suffix.lower() in JPEG_SUFFIXES:
        if num_classes != 2 or value_map is not None:
            raise DataError(
                f"mask file {path} is a lossy JPEG, whose values cannot be mapped exactly to classes "
                f"(num_classes={num_classes}, value_map={value_map!r})",
                fix="save the masks as PNG, or use num_classes=2 without value_map to threshold them at 128",
            )
        _warn_jpeg_once(path)
        return (values >= _JPEG_THRESHOLD).astype(np.int64)
    return map_mask_values(values, num_classes, value_map, source=path)


def check_same_size(
    image_path: str | Path, image_hw: tuple[int, ...], mask_path: str | Path, mask_hw: tuple[int, ...]
) -> None:
    """Raise unless an image and its mask have the same spatial size.

    Args:
        image_path: Image file, named in the error.
        image_hw: Spatial size of the image, ``(H, W)``.
        mask_path: Mask file, named in the error.
        mask_hw: Spatial size of the mask, ``(H, W)``.

    Raises:
        DataError: the sizes differ (names both files and sizes).
    """
    if tuple(image_hw) != tuple(mask_hw):
        fmt = "x".join
        raise DataError(
            f"image {image_path} is {fmt(map(str, image_hw))} (HxW) but its mask {mask_path} is "
            f"{fmt(map(str, mask_hw))}",
            fix="make image and mask the same size (resize the mask with nearest neighbour) or pair the right files",
        )


def read_case(
    case: Case, num_classes: int = 2, value_map: Mapping[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a case's image and mask, merging several mask files and filling negatives with background.

    Args:
        case: The case; see :meth:`Case.mask_files`.
        num_classes: K, background included.
        value_map: Optional {stored value: class index}, applied to every mask file.

    Returns:
        ``(image, mask)``: float32 ``[C, H, W]`` in [0, 1] and int64 ``[H, W]`` in ``0..K-1``. Merged masks are
        the union of their foregrounds.

    Raises:
        DataError: unreadable files, mask values no policy accounts for, size mismatches, or merged masks that
        give one pixel two different foreground classes.
    """
    image = read_image(case.image)
    hw = image.shape[1:]
    mask = np.zeros(hw, dtype=np.int64)
    first: Path | None = None
    for mask_path in case.mask_files():
        part = read_mask(mask_path, num_classes, value_map)
        check_same_size(case.image, hw, mask_path, part.shape)
        clash = (mask > 0) & (part > 0) & (mask != part)
        if clash.any():
            raise DataError(
                f"case {case.case_id!r}: masks {first} and {mask_path} give {int(clash.sum())} pixels different "
                "foreground classes",
                fix="merge only masks of one class, or combine them into one mask file",
            )
        mask = np.maximum(mask, part)
        first = first or mask_path
    return image, mask
