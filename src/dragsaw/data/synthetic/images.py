"""Seeded synthetic dermoscopy-like images: the embedded default data of demos and smoke tests.

Each image shows one lesion on skin, designed so that colour or intensity alone does not segment it:

* the lesion outline is an ellipse whose radius is perturbed by random Fourier terms plus fine roughness;
* the visible edge is blurred by a spatially varying width, nearly vanishes along part of the border (contrast
  modulated along the outline) and is displaced from the ground-truth outline by a smooth random field (the
  ambiguity of a human annotation);
* skin and lesion share illumination, mottling and pixel noise; the lesion has internal texture and pale
  regression areas; darker skin blotches, dark hair curves crossing lesion and skin, vignetting and (sometimes) the
  dark circular rim of a dermoscope confound a threshold;
* position, size, aspect, colours and contrast vary per image.

With ``num_classes = K > 2`` the lesion holds ``K - 2`` nested darker cores (classes 2..K-1).

Image ``i`` of seed ``s`` depends only on ``(s, i)``: ``generate(5, seed=s)`` is the first five images of
``generate(10, seed=s)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dragsaw._atomic import atomic_dir
from dragsaw.data.synthetic.fields import sigmoid, spline_matrix
from dragsaw._checks import int_sequence, is_int
from dragsaw.errors import ConfigError

__all__ = ["generate", "write_folder"]

_TRAIN_STREAM, _TEST_STREAM = 0, 1


def _field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field, zero mean and about unit std, with about ``cells`` blobs across each axis.

    A coarse Gaussian grid is smoothed and sampled by separable cubic B-splines (two small matrix products).
    """
    grid = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    # einsum runs single-threaded C loops: for these small products it beats a threaded BLAS call on a busy machine.
    rows = np.einsum("ij,jk->ik", spline_matrix(shape[0], cells), grid)
    out = np.einsum("ik,jk->ij", rows, spline_matrix(shape[1], cells))
    out -= out.mean()
    return out / (out.std() + 1e-8)


def _hair(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Opacity map in [0, 1] of a few dark, slightly curved hairs."""
    h, w = shape
    s = min(h, w)
    canvas = np.zeros(shape, dtype=np.float32)
    for _ in range(rng.poisson(3.0)):
        length = s * rng.uniform(0.3, 1.3)
        n = max(int(length * 2), 2)
        t = np.linspace(0.0, 1.0, n)
        angle = rng.uniform(0, 2 * math.pi)
        d = np.array([math.sin(angle), math.cos(angle)])
        normal = np.array([-d[1], d[0]])
        start = np.array([rng.uniform(0, h), rng.uniform(0, w)]) - d * length * rng.uniform(0.2, 0.8)
        bend = length * rng.uniform(-0.15, 0.15) * np.sin(math.pi * t * rng.uniform(0.5, 2.0) + rng.uniform(0, 6.3))
        pts = start[None] + t[:, None] * d[None] * length + bend[:, None] * normal[None]
        thick = rng.uniform(0.5, 1.6)
        for off in np.arange(-thick, thick + 1e-9, 0.5):
            p = np.rint(pts + off * normal[None]).astype(int)
            keep = (p[:, 0] >= 0) & (p[:, 0] < h) & (p[:, 1] >= 0) & (p[:, 1] < w)
            canvas[p[keep, 0], p[keep, 1]] = rng.uniform(0.6, 0.95)
    return np.clip(ndimage.gaussian_filter(canvas, 0.6) * 1.6, 0.0, 1.0)


def _one(rng: np.random.Generator, shape: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Geometry: a rotated ellipse with a Fourier-perturbed radius and fine roughness; sd < 0 inside.
    cy, cx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7)
    r0 = s * rng.uniform(0.13, 0.3)
    aspect, rot = rng.uniform(0.65, 1.0), rng.uniform(0, math.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / aspect
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k in range(2, 11):
        radius += rng.normal(0.0, 0.22 / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    radius = r0 * np.clip(radius, 0.35, None)
    sd = rho - radius + 0.05 * r0 * _field(rng, shape, 14)
    mask = (sd < 0).astype(np.uint8)
    for cls in range(2, num_classes):  # nested darker cores
        depth = 0.25 + 0.5 * (cls - 1) / (num_classes - 1)
        core = rho - radius * (1 - depth) + 0.06 * r0 * _field(rng, shape, 8)
        mask[(core < 0) & (mask > 0)] = cls

    # Appearance: the visible edge is displaced from the annotation, blurred by a varying width, and faint in parts.
    sd_seen = sd + 0.08 * r0 * _field(rng, shape, 5)
    width = r0 * (0.02 + 0.14 * sigmoid(2.0 * _field(rng, shape, 4)))
    seen = sigmoid(-sd_seen / width)
    contrast = np.clip(0.8 + 0.4 * _field(rng, shape, 3), 0.1, 1.0) * rng.uniform(0.75, 1.0)
    opacity = seen * contrast * (1.0 - 0.5 * sigmoid(4.0 * (_field(rng, shape, 6) - 1.2)))  # pale regression areas
    for cls in range(2, num_classes):
        opacity = np.where(mask == cls, np.minimum(1.0, opacity * (1.0 + 0.25 * (cls - 1))), opacity)

    skin = np.array([0.86, 0.66, 0.56], dtype=np.float32) + rng.uniform(-0.07, 0.07, 3).astype(np.float32)
    skin *= rng.uniform(0.75, 1.05)
    lesion = skin * np.array([rng.uniform(0.45, 0.75), rng.uniform(0.3, 0.65), rng.uniform(0.3, 0.65)], np.float32)
    diff = (skin - lesion)[:, None, None]
    image = skin[:, None, None] - diff * opacity[None]

    # Shared texture: illumination, mottling and darker skin blotches; lesion-only pigment texture.
    image *= 1.0 + 0.08 * _field(rng, shape, 2)[None]
    image += 0.035 * _field(rng, shape, 20)[None]
    image -= diff * (sigmoid(5.0 * (_field(rng, shape, 7) - 1.8)) * rng.uniform(0.2, 0.6))[None]
    image -= diff * (0.15 * seen * _field(rng, shape, 24))[None]

    hair = _hair(rng, shape)
    hair_colour = np.array([0.18, 0.12, 0.1], dtype=np.float32) * rng.uniform(0.5, 1.5)
    image = image * (1 - hair) + hair_colour[:, None, None] * hair

    # Optics: vignetting, sometimes the dermoscope's dark circular rim, sensor noise.
    rr = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    image *= 1.0 - rng.uniform(0.05, 0.35) * rr**2
    if rng.random() < 0.35:
        image *= sigmoid((rng.uniform(1.0, 1.25) - rr) * 25.0)
    image += rng.uniform(0.01, 0.035) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(pixels), mask


def _check(n: int, size: tuple[int, int], seed: int, num_classes: int, n_name: str = "n") -> tuple[int, int]:
    if not is_int(n, numpy=True) or n < 0:
        raise ConfigError(f"{n_name} must be a non-negative integer, got {n!r}")
    if not (isinstance(size, (tuple, list)) and int_sequence(size, 2, minimum=16)):
        raise ConfigError(f"size must be two integers (H, W), each >= 16, got {size!r}")
    if not is_int(seed, numpy=True) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(num_classes, numpy=True) or not 2 <= num_classes <= 8:
        raise ConfigError(f"num_classes must be an integer in 2..8 (background included), got {num_classes!r}")
    return int(size[0]), int(size[1])


def _generate(n: int, shape: tuple[int, int], seed: int, num_classes: int, stream: int) -> list:
    return [_one(np.random.default_rng((seed, stream, i)), shape, num_classes) for i in range(n)]


def generate(
    n: int, size: tuple[int, int] = (256, 256), seed: int = 0, num_classes: int = 2
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generate ``n`` synthetic dermoscopy-like images and their masks.

    Args:
        n: Number of images.
        size: ``(H, W)``, each at least 16.
        seed: Non-negative seed; image ``i`` depends only on ``(seed, i)``.
        num_classes: K in 2..8; classes 2..K-1 are nested darker cores inside the lesion.

    Returns:
        ``[(image, mask), ...]``: image uint8 ``[H, W, 3]``, mask uint8 ``[H, W]`` with class indices ``0..K-1``.

    Raises:
        ConfigError: invalid arguments.
    """
    shape = _check(n, size, seed, num_classes)
    return _generate(n, shape, int(seed), int(num_classes), _TRAIN_STREAM)


def write_folder(
    out_dir: str | Path,
    n_train: int = 80,
    n_test: int = 20,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    num_classes: int = 2,
) -> Path:
    """Write a synthetic dataset in the generic folder layout read by :func:`dragsaw.data.adapters.images.folder`.

    ``out_dir/{train,test}/images/synth_<split>_<i>.png`` (RGB) and ``.../masks/synth_<split>_<i>.png``
    (single-channel: {0, 255} when binary, class indices otherwise). The training images are those of
    ``generate(n_train, size, seed, num_classes)``; the test images come from a separate stream of the same seed.
    The folder is written next to ``out_dir`` under a temporary name and renamed when complete.

    Args:
        out_dir: Folder to create; it must not exist or be empty.
        n_train: Number of training cases (>= 1).
        n_test: Number of test cases (>= 0; 0 writes no ``test/``).
        size: ``(H, W)``.
        seed: Non-negative seed.
        num_classes: K in 2..8.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ConfigError: invalid arguments.
        DataError: ``out_dir`` exists and is a file or a non-empty folder.
    """
    shape = _check(n_train, size, seed, num_classes, "n_train")
    _check(n_test, size, seed, num_classes, "n_test")
    if n_train < 1:
        raise ConfigError(f"n_train must be at least 1, got {n_train}")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        for split, count, stream in (("train", n_train, _TRAIN_STREAM), ("test", n_test, _TEST_STREAM)):
            if count == 0:
                continue
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "masks").mkdir(parents=True)
            for i, (image, mask) in enumerate(_generate(count, shape, int(seed), int(num_classes), stream)):
                name = f"synth_{split}_{i:04d}.png"
                Image.fromarray(image).save(tmp / split / "images" / name, compress_level=1)
                stored = mask * 255 if num_classes == 2 else mask
                Image.fromarray(stored.astype(np.uint8)).save(tmp / split / "masks" / name, compress_level=1)
    return out
