"""Volumes back in their files' geometry: predictions resampled onto the input grid, NIfTI written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from dragsaw._atomic import atomic_file
from dragsaw.errors import ConfigError

__all__ = ["NIFTI_SUFFIXES", "nifti_stem", "to_original_geometry", "write_nifti"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def nifti_stem(path: str | Path) -> str | None:
    """File name without its NIfTI ending (``"la_003.nii.gz"`` -> ``"la_003"``), or None for other files."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _meta_geometry(meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(preprocessed affine, original affine, original shape) from an item's meta or a MONAI meta dict."""
    if "affine_preprocessed" in meta:  # dragsaw item meta
        keys = ("affine_preprocessed", "affine", "shape")
    elif "original_affine" in meta and "spatial_shape" in meta:  # MONAI MetaTensor meta after reorient/resample
        keys = ("affine", "original_affine", "spatial_shape")
    else:
        raise ConfigError(
            f"meta has keys {sorted(meta)}; expected a dragsaw item meta ('affine', 'shape', 'affine_preprocessed') "
            "or a MONAI meta dict ('affine', 'original_affine', 'spatial_shape')"
        )
    src, dst, shape = (meta[k] for k in keys)
    src, dst, shape = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.float64) for v in (src, dst, shape))
    return src, dst, tuple(int(s) for s in shape.reshape(-1))


def to_original_geometry(
    pred: np.ndarray | torch.Tensor, meta: Mapping[str, Any] | None = None, *, mode: str | None = None
) -> np.ndarray:
    """Resample a prediction from the preprocessed space back onto the input file's voxel grid.

    Both grids map voxels to the same world space through their affines, so this is one MONAI ``SpatialResample``
    (voxels outside the preprocessed extent take the nearest border value).

    Args:
        pred: ``[D, H, W]`` or ``[C, D, H, W]`` in the preprocessed space. Integer/bool dtypes (label maps) use
            nearest neighbour, float dtypes (probability or uncertainty maps) trilinear interpolation.
        meta: The evaluation item's ``"meta"`` (``"affine"``, ``"shape"``, ``"affine_preprocessed"``) or a MONAI
            meta dict (``"affine"``, ``"original_affine"``, ``"spatial_shape"``); None reads ``pred.meta``
            (a MONAI ``MetaTensor``).
        mode: "nearest" or "bilinear" to override the choice made from the dtype.

    Returns:
        The input's dtype for label maps, else float32, on the original grid (the input file's shape and affine).

    Shape:
        ``[*S_pre]`` or ``[C, *S_pre]`` -> ``[*S_orig]`` or ``[C, *S_orig]``.

    Raises:
        ConfigError: a prediction that is not 3D/4D, an unknown ``mode``, or a meta without the geometry.
    """
    if meta is None:
        if not isinstance(pred, MetaTensor):
            raise ConfigError("to_original_geometry needs meta (the item's 'meta') unless pred is a MONAI MetaTensor")
        meta = pred.meta
    src, dst, shape = _meta_geometry(meta)
    tensor = torch.as_tensor(pred.as_tensor() if isinstance(pred, MetaTensor) else pred).detach().cpu()
    if tensor.ndim not in (3, 4):
        raise ConfigError(f"pred must be [D, H, W] or [C, D, H, W], got shape {tuple(tensor.shape)}")
    is_label = not (tensor.is_floating_point() or tensor.is_complex())
    mode = mode or ("nearest" if is_label else "bilinear")
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    channel = tensor[None] if tensor.ndim == 3 else tensor
    src_img = MetaTensor(channel.to(torch.float64 if is_label else torch.float32), affine=torch.as_tensor(src))
    out = SpatialResample(mode=mode, padding_mode="border")(
        src_img, dst_affine=torch.as_tensor(dst), spatial_size=shape, dtype=src_img.dtype
    )
    out = torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out).numpy()
    result = np.rint(out).astype(tensor.numpy().dtype) if is_label else out.astype(np.float32)
    return result[0] if tensor.ndim == 3 else result


def write_nifti(array: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """Write a volume as NIfTI atomically (a temporary file in the target folder, then ``os.replace``).

    Integer arrays are stored as uint8 when their values fit, else int16/int32; float arrays as float32. A
    channel-first array ``[C, X, Y, Z]`` is stored as a 4D file with the channels on the 4th axis (the Decathlon
    convention). The sform and qform are both set to ``affine`` (code 1, scanner space), units mm.

    Args:
        array: ``[X, Y, Z]`` or ``[C, X, Y, Z]``.
        affine: Voxel -> world 4x4 matrix (e.g. the item's ``meta["affine"]``).
        path: Output file ending in ``.nii.gz`` or ``.nii``; its folder is created.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: bad suffix, array rank, affine shape, or non-finite float values.
    """
    path = Path(path)
    stem = nifti_stem(path)
    if stem is None:
        raise ConfigError(f"write_nifti path {path} must end in .nii.gz or .nii")
    data = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if data.ndim not in (3, 4) or aff.shape != (4, 4):
        raise ConfigError(
            f"write_nifti needs an array [X, Y, Z] or [C, X, Y, Z] and a 4x4 affine, got {data.shape} and {aff.shape}"
        )
    if data.dtype == bool or np.issubdtype(data.dtype, np.integer):
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        fits = (t for t in (np.uint8, np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
        dtype = next(fits, np.int64)
        data = data.astype(dtype)
    else:
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise ConfigError(f"write_nifti: the array for {path} holds NaN or Inf values")
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_file(path, suffix=f".tmp{path.name[len(stem):]}") as tmp:
        nib.save(img, tmp)
    return path
