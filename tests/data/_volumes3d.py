"""Helpers of the 3D data tests: tiny NIfTI task folders written with nibabel, and a one-thread fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (24, 20, 16)
SPACING = (1.5, 1.0, 2.5)


def make_affine(spacing=SPACING, rot_deg: float = 7.0, origin=(10.0, -20.0, 5.0), lps: bool = True) -> np.ndarray:
    """Voxel -> world: x/y flipped (LPS-like storage) when ``lps``, rotated ``rot_deg`` about z, offset origin."""
    t = math.radians(rot_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    sign = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(sign * np.asarray(spacing, dtype=float))
    affine[:3, 3] = origin
    return affine


def make_volume(shape=SHAPE, channels: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image float32 ``[*shape, C]`` (zero outside a box "body", positive inside) and a 3-class label ``[*shape]``."""
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, channels), dtype=np.float32)
    body = tuple(slice(2, s - 2) for s in shape)
    image[body] = rng.uniform(50, 150, size=image[body].shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    x0, y0, z0 = (int(v) for v in rng.integers(4, 7, size=3))
    label[x0 : x0 + 8, y0 : y0 + 7, z0 : z0 + 6] = 1
    label[x0 + 2 : x0 + 5, y0 + 2 : y0 + 5, z0 + 2 : z0 + 4] = 2
    image[label > 0] += 100.0
    return image, label


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_task(
    root: Path,
    n_train: int = 3,
    n_test: int = 0,
    *,
    layout: str = "msd",
    modalities=("MRI-A", "MRI-B"),
    test_labels: bool = True,
    shape=SHAPE,
    spacing=SPACING,
    affine: np.ndarray | None = None,
) -> Path:
    """A tiny Decathlon (``layout="msd"``: 4D images) or nnU-Net raw (one file per channel) task folder."""
    affine = make_affine(spacing) if affine is None else affine
    meta = {
        "name": "tiny",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {"0": "background", "1": "outer", "2": "core"},
        "training": [],
        "test": [],
    }
    for split, count, offset in (("Tr", n_train, 0), ("Ts", n_test, 100)):
        for i in range(count):
            name = f"case_{offset + i:03d}"
            image, label = make_volume(shape, len(modalities), seed=offset + i)
            if layout == "msd":
                data = image if len(modalities) > 1 else image[..., 0]
                save(root / f"images{split}" / f"{name}.nii.gz", data, affine)
            else:
                for c in range(len(modalities)):
                    save(root / f"images{split}" / f"{name}_{c:04d}.nii.gz", image[..., c], affine)
            if split == "Tr" or test_labels:
                save(root / f"labels{split}" / f"{name}.nii.gz", label, affine)
            if split == "Tr":
                meta["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            else:
                meta["test"].append(f"./imagesTs/{name}.nii.gz")
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root
