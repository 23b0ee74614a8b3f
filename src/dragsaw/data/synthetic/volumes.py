"""Seeded synthetic multi-modal MRI-like volumes: the embedded 3D default of demos and smoke tests.

Each volume shows a lesion inside a "body" (an ellipsoid outside which every voxel is exactly 0, like a
skull-stripped brain), designed so that a tiny model does not segment it perfectly in a few minutes:

* the lesion (class 1, outer) is a rotated ellipsoid whose surface is perturbed by smooth random lumps and fine
  roughness; class 2 is an eccentric inner core, strictly inside the lesion (with ``num_classes = K > 3``, classes
  3..K-1 are further cores inside the lesion);
* each modality has its own contrasts: in modality A the outer region is bright and the core only a little
  brighter than the background; in modality B the outer region is nearly invisible and the core bright (further
  modalities get random contrasts); no single modality shows both boundaries;
* the visible edge is blurred by a spatially varying width, displaced from the ground truth by a smooth field, and
  its contrast fades to almost nothing over part of the surface;
* tissue texture, lesion texture, bright look-alike blobs outside the lesion, a smooth multiplicative bias field
  per modality and Gaussian noise;
* voxels are anisotropic (default 1 x 1 x 2.5 mm) and the affine is not the identity: the axes are stored LPS-like
  (x and y flipped), rotated by a few degrees, with an origin offset.

Volume ``i`` of seed ``s`` depends only on ``(s, split stream, i)``: ``generate3d(5, seed=s)`` is the first five
volumes of ``generate3d(10, seed=s)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from dragsaw.data.io.volumes import write_nifti
from dragsaw.data.synthetic.fields import sigmoid, spline_matrix
from dragsaw.data.transforms.common import as_float_tuple
from dragsaw._atomic import atomic_dir
from dragsaw._checks import int_sequence, is_int
from dragsaw.errors import ConfigError

__all__ = ["generate3d", "write_decathlon", "MODALITY_NAMES"]

MODALITY_NAMES = ("MRI-A", "MRI-B", "MRI-C", "MRI-D")
"""Names written to ``dataset.json`` for 1..4 modalities (MRI-like: normalised per volume)."""

_TRAIN_STREAM, _TEST_STREAM = 0, 1
_INTENSITY_SCALE = 500.0  # stored int16 value of background tissue


def _field(rng: np.random.Generator, shape: tuple[int, int, int], extent: np.ndarray, feature_mm: float) -> np.ndarray:
    """Smooth random field (zero mean, unit std) with blobs about ``feature_mm`` wide, by separable B-splines."""
    cells = [max(1, int(round(e / feature_mm))) for e in extent]
    grid = rng.standard_normal([c + 3 for c in cells], dtype=np.float32)
    out = np.einsum("ai,ijk->ajk", spline_matrix(shape[0], cells[0]), grid)
    out = np.einsum("bj,ajk->abk", spline_matrix(shape[1], cells[1]), out)
    out = np.einsum("ck,abk->abc", spline_matrix(shape[2], cells[2]), out)
    out -= out.mean()
    return out / (out.std() + 1e-8)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _affine(rng: np.random.Generator, spacing: tuple[float, float, float]) -> np.ndarray:
    """LPS-like storage (x, y flipped), a rotation of a few degrees and an origin offset."""
    tz, tx = np.radians(rng.uniform(-10, 10)), np.radians(rng.uniform(-5, 5))
    rz = np.array([[math.cos(tz), -math.sin(tz), 0], [math.sin(tz), math.cos(tz), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(tx), -math.sin(tx)], [0, math.sin(tx), math.cos(tx)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = rng.uniform(-40, 40, 3)
    return affine


def _contrasts(rng: np.random.Generator, modalities: int) -> list[tuple[float, float]]:
    """(outer, core) intensity offsets relative to background tissue, per modality."""
    out = []
    for m in range(modalities):
        if m == 0:
            a = rng.uniform(0.3, 0.45)
            out.append((a, a + rng.uniform(0.05, 0.15)))
        elif m == 1:
            out.append((rng.uniform(-0.04, 0.06), rng.uniform(0.4, 0.6)))
        else:
            out.append((rng.uniform(-0.3, 0.3), rng.uniform(-0.4, 0.4)))
    return out


def _one(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float], num_classes: int,
    modalities: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    sp = np.array(spacing, dtype=np.float32)
    extent = np.array(shape) * sp
    grids = np.ogrid[0 : shape[0], 0 : shape[1], 0 : shape[2]]
    mm = [(g.astype(np.float32) - (n - 1) / 2.0) * s for g, n, s in zip(grids, shape, sp)]
    fld = lambda feature: _field(rng, shape, extent, feature)  # noqa: E731

    body_r = extent * rng.uniform(0.44, 0.5, 3)
    body = (np.sqrt(sum((x / r) ** 2 for x, r in zip(mm, body_r))) + 0.03 * fld(30.0)) < 1.0

    # Lesion geometry in mm: a rotated ellipsoid, lumpy and rough; an eccentric core inside.
    r0 = float(extent.min()) * rng.uniform(0.17, 0.26)
    axes = r0 * rng.uniform(0.75, 1.25, 3)
    centre = body_r * rng.uniform(-0.3, 0.3, 3)
    rot = _rotation(rng)
    off = [x - c for x, c in zip(mm, centre)]
    u = [sum(rot[k, j] * off[j] for j in range(3)) / axes[k] for k in range(3)]
    rho = np.sqrt(sum(c**2 for c in u))
    sd = (rho - 1.0) * r0 + r0 * (0.16 * fld(1.2 * r0) + 0.04 * fld(0.35 * r0))
    label = ((sd < 0) & body).astype(np.uint8)
    inner = ndimage.binary_erosion(label > 0)  # cores stay strictly inside the lesion (6-neighbourhood)
    cores = []
    for cls in range(2, num_classes):
        depth = 0.35 + 0.35 * (cls - 2) / max(num_classes - 3, 1)
        shift = rot.T @ (rng.uniform(-0.2, 0.2, 3) * axes)
        rho_c = np.sqrt(sum((sum(rot[k, j] * (off[j] - shift[j]) for j in range(3)) / axes[k]) ** 2 for k in range(3)))
        core_sd = (rho_c - (1.0 - depth)) * r0 + r0 * 0.08 * fld(0.8 * r0)
        label[(core_sd < 0) & inner & (label > 0)] = cls
        cores.append(core_sd)

    # Appearance: displaced, blurred edges whose contrast fades over part of the surface.
    width = 0.4 + 2.0 * sigmoid(2.0 * fld(r0))
    seen_outer = sigmoid(-(sd + 1.0 * fld(0.8 * r0)) / width)
    seen_cores = [sigmoid(-(c + 0.8 * fld(0.8 * r0)) / width) * seen_outer for c in cores]
    # Fading: 2-4 patches of the outer surface (around random directions) lose almost all contrast.
    spots = np.zeros(shape, dtype=np.float32)
    for _ in range(rng.integers(2, 5)):
        v = rng.standard_normal(3)
        cos = sum(c * w for c, w in zip(u, v / np.linalg.norm(v))) / np.maximum(rho, 1e-6)
        spots += np.exp(rng.uniform(3.0, 6.0) * (cos - 1.0)).astype(np.float32)
    fade = 1.0 - 0.92 * np.clip(spots, 0.0, 1.0) * sigmoid((rho - 0.7) / 0.08)
    core_fade = np.clip(0.85 + 0.15 * fld(0.9 * r0), 0.5, 1.0)
    lookalike = sigmoid(4.0 * (fld(0.7 * r0) - 1.6)) * (1.0 - seen_outer)
    tissue = fld(6.0)
    lesion_texture = fld(3.0) * seen_outer
    image = np.empty((modalities, *shape), dtype=np.int16)
    for m, (a, b) in enumerate(_contrasts(rng, modalities)):
        x = 1.0 + fade * a * seen_outer
        for k, seen in enumerate(seen_cores):  # each deeper core adds a step towards the core contrast
            x += core_fade * (b - a) * seen / (k + 1)
        x += rng.uniform(0.03, 0.06) * tissue + 0.06 * lesion_texture + 0.7 * a * lookalike
        x *= np.exp(0.1 * fld(float(extent.max()) / 1.5))
        x += rng.uniform(0.03, 0.06) * rng.standard_normal(shape, dtype=np.float32)
        image[m] = np.rint(np.clip(x, 0.05, None) * body * _INTENSITY_SCALE).astype(np.int16)
    return image, label, _affine(rng, spacing)


def _check(
    n: int, shape: Sequence[int], spacing: Sequence[float], seed: int, num_classes: int, modalities: int,
    n_name: str = "n",
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:  # fmt: skip
    if not is_int(n, numpy=True) or n < 0:
        raise ConfigError(f"{n_name} must be a non-negative integer, got {n!r}")
    if not (isinstance(shape, (tuple, list)) and int_sequence(shape, 3, minimum=16)):
        raise ConfigError(f"shape must be three integers (X, Y, Z), each >= 16, got {shape!r}")
    spacing = as_float_tuple("spacing", spacing)
    if not is_int(seed, numpy=True) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not is_int(num_classes, numpy=True) or not 2 <= num_classes <= 6:
        raise ConfigError(f"num_classes must be an integer in 2..6 (background included), got {num_classes!r}")
    if not is_int(modalities, numpy=True) or not 1 <= modalities <= len(MODALITY_NAMES):
        raise ConfigError(f"modalities must be an integer in 1..{len(MODALITY_NAMES)}, got {modalities!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), spacing  # type: ignore[return-value]


def _generate(n, shape, spacing, seed, num_classes, modalities, stream) -> list:
    return [_one(np.random.default_rng((seed, stream, i)), shape, spacing, num_classes, modalities) for i in range(n)]


def generate3d(
    n: int,
    shape: Sequence[int] = (48, 48, 32),
    spacing: Sequence[float] = (1.0, 1.0, 2.5),
    seed: int = 0,
    num_classes: int = 3,
    modalities: int = 2,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Generate ``n`` synthetic multi-modal volumes, their label maps and affines.

    Args:
        n: Number of volumes.
        shape: ``(X, Y, Z)`` voxels, each at least 16.
        spacing: Voxel size in mm per axis.
        seed: Non-negative seed; volume ``i`` depends only on ``(seed, i)``.
        num_classes: K in 2..6 (background, outer, core, further cores).
        modalities: Number of channels, 1..4.

    Returns:
        ``[(image, label, affine), ...]``: image int16 ``[M, X, Y, Z]`` (0 outside the body, positive inside),
        label uint8 ``[X, Y, Z]`` with class indices ``0..K-1``, affine float64 4x4 (voxel -> world mm).

    Raises:
        ConfigError: invalid arguments.
    """
    shape_t, spacing_t = _check(n, shape, spacing, seed, num_classes, modalities)
    return _generate(n, shape_t, spacing_t, int(seed), int(num_classes), int(modalities), _TRAIN_STREAM)


def _label_names(num_classes: int) -> dict[str, str]:
    names = ["background", "outer", "core"] + [f"core_{k}" for k in range(2, num_classes - 1)]
    return {str(k): names[k] for k in range(num_classes)}


def write_decathlon(
    out_dir: str | Path,
    n_train: int = 20,
    n_test: int = 5,
    shape: Sequence[int] = (48, 48, 32),
    spacing: Sequence[float] = (1.0, 1.0, 2.5),
    seed: int = 0,
    num_classes: int = 3,
    modalities: int = 2,
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon layout read by :func:`decathlon`.

    ``dataset.json`` ("modality" ``{"0": "MRI-A", "1": "MRI-B", ...}``, "labels", "training", "test"),
    ``imagesTr/synth_tr_<i>.nii.gz`` (4D int16 with the modalities on the 4th axis; 3D for one modality),
    ``labelsTr/synth_tr_<i>.nii.gz`` (uint8), ``imagesTs/synth_ts_<i>.nii.gz`` and ``labelsTs/...``. The official MSD
    has no ``labelsTs``; it is written here so that demos can evaluate on the test split. The training volumes are
    those of :func:`generate3d`; the test volumes come from a separate stream of the same seed. The folder is
    written next to ``out_dir`` under a temporary name and renamed when complete.

    Args:
        out_dir: Folder to create; it must not exist or be empty.
        n_train: Number of training cases (>= 1).
        n_test: Number of test cases (>= 0; 0 writes no test folders).
        shape: ``(X, Y, Z)``.
        spacing: Voxel size in mm.
        seed: Non-negative seed.
        num_classes: K in 2..6.
        modalities: Number of channels, 1..4.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ConfigError: invalid arguments.
        DataError: ``out_dir`` exists and is a file or a non-empty folder.
    """
    shape_t, spacing_t = _check(n_train, shape, spacing, seed, num_classes, modalities, "n_train")
    _check(n_test, shape, spacing, seed, num_classes, modalities, "n_test")
    if n_train < 1:
        raise ConfigError(f"n_train must be at least 1, got {n_train}")
    out = Path(out_dir)
    meta: dict = {
        "name": "dragsaw-synthetic3d",
        "description": "Seeded synthetic multi-modal lesion volumes (dragsaw.data.synthetic.volumes); labelsTs is an "
        "addition for demos (the official MSD publishes no test labels)",
        "reference": "generated", "licence": "CC0", "release": "1.0",
        "tensorImageSize": "4D" if modalities > 1 else "3D",
        "modality": {str(m): MODALITY_NAMES[m] for m in range(modalities)},
        "labels": _label_names(int(num_classes)),
        "numTraining": int(n_train), "numTest": int(n_test), "training": [], "test": [],
    }  # fmt: skip
    with atomic_dir(out) as tmp:
        for split, count, stream, tag in (("Tr", n_train, _TRAIN_STREAM, "tr"), ("Ts", n_test, _TEST_STREAM, "ts")):
            volumes = _generate(int(count), shape_t, spacing_t, int(seed), int(num_classes), int(modalities), stream)
            for i, (image, label, affine) in enumerate(volumes):
                name = f"synth_{tag}_{i:03d}.nii.gz"
                write_nifti(image if modalities > 1 else image[0], affine, tmp / f"images{split}" / name)
                write_nifti(label, affine, tmp / f"labels{split}" / name)
                if split == "Tr":
                    meta["training"].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
                else:
                    meta["test"].append(f"./imagesTs/{name}")
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out
