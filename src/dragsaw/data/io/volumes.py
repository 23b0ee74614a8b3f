"""NIfTI volumes: headers and checked loading (MONAI + nibabel); writing and mapping back in ``geometry3d``.

Conventions:

* A volume case is a :class:`~dragsaw.data.cases.Case` whose image is one NIfTI file (3D, or 4D with the channels
  on the 4th axis as in the Medical Segmentation Decathlon) or, in the nnU-Net raw layout, one 3D file per channel
  listed in ``case.extra["channels"]``. Its mask is a 3D label map of class indices.
* Arrays are channel first: images ``[C, X, Y, Z]``, labels ``[X, Y, Z]``, in the file's voxel order unless said
  otherwise ("preprocessed space" is RAS-oriented and resampled, see :mod:`dragsaw.data.transforms.volumes`).
* Every problem with a file raises :class:`~dragsaw.errors.DataError` naming the file and the fix: unreadable
  headers, NaN/Inf voxels, label values outside :func:`dragsaw.data.io.images.map_mask_values`' rules, shape mismatches.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from dragsaw.data.cases import Case
from dragsaw.data.io.files import require_file
from dragsaw.data.io.geometry import NIFTI_SUFFIXES, nifti_stem, to_original_geometry, write_nifti
from dragsaw.data.io.labels import map_mask_values
from dragsaw.errors import DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "VolumeHeader",
    "nifti_stem",
    "read_header",
    "image_files",
    "check_case_geometry",
    "case_to_dict",
    "LoadVolumed",
    "NATIVE_LABEL_KEY",
    "to_original_geometry",
    "write_nifti",
]

"""File endings read as NIfTI volumes (compared in lower case)."""

NATIVE_LABEL_KEY = "native_label"
"""Key of the label in the file's own geometry inside the preprocessing pipeline (renamed ``"label_native"`` at
its end)."""

_AFFINE_ATOL = 1e-3  # mm: image and label affines closer than this are "the same grid"


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of one NIfTI file, read from its header only (no voxel data).

    Attributes:
        path: The file.
        shape: Spatial shape ``(X, Y, Z)`` in file voxel order.
        channels: 1 for a 3D file, the 4th dimension for a 4D file.
        affine: Voxel -> world (RAS mm) 4x4 matrix, as nibabel reports it (sform, else qform).
        spacing: Voxel sizes in mm per file axis (the affine's column norms: the header's pixdim).
    """

    path: Path
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    spacing: tuple[float, float, float]


def read_header(path: str | Path, what: str = "image") -> VolumeHeader:
    """Read a NIfTI file's geometry without loading its voxels.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        what: Word used in error messages ("image", "label", "channel").

    Raises:
        DataError: missing, empty or non-NIfTI file; not 3D/4D; singular or non-finite affine.
    """
    path = require_file(path, what, empty_fix="re-download or re-extract it")
    if nifti_stem(path) is None:
        raise DataError(f"{what} file {path} is not a NIfTI file (.nii or .nii.gz)", fix="convert it to NIfTI")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, ... for bad files
        raise DataError(
            f"{what} file {path} cannot be read as NIfTI ({type(exc).__name__}: {exc})",
            fix="re-download or re-export it",
        ) from exc
    if len(shape) not in (3, 4):
        raise DataError(f"{what} file {path} has shape {shape}; expected 3D, or 4D with the channels on the 4th axis")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{what} file {path} has an invalid affine {affine.tolist()}", fix="repair its header")
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return VolumeHeader(path, shape[:3], shape[3] if len(shape) == 4 else 1, affine, spacing)  # type: ignore[arg-type]


def image_files(case: Case) -> tuple[Path, ...]:
    """The image file(s) of a volume case: ``extra["channels"]`` (one 3D file per channel) or ``(case.image,)``."""
    channels = case.extra.get("channels")
    return tuple(Path(p) for p in channels) if channels else (case.image,)


def check_case_geometry(case: Case, channels: int | None = None) -> VolumeHeader:
    """Check a volume case from its headers: channel files alike, channel count, label shape.

    Args:
        case: A volume case (see the module conventions).
        channels: Expected channel count (e.g. the number of modalities), or None to skip that check.

    Returns:
        The header of the (first) image file, with ``channels`` set to the case's total channel count.

    Raises:
        DataError: unreadable headers, channel files of different shapes or that are not 3D, a channel count other
            than ``channels``, or a label that is not 3D or has another spatial shape than the image.
    """
    files = image_files(case)
    heads = [read_header(p, "channel" if len(files) > 1 else "image") for p in files]
    first = heads[0]
    if len(files) > 1:
        for head in heads:
            if head.channels != 1 or head.shape != first.shape:
                raise DataError(
                    f"case {case.case_id!r}: channel file {head.path} has shape {head.shape} with {head.channels} "
                    f"channel(s) but channel file {first.path} has shape {first.shape} with 1",
                    fix="every channel file must be one 3D volume on the same grid",
                )
    total = sum(h.channels for h in heads)
    if channels is not None and total != channels:
        raise DataError(
            f"case {case.case_id!r}: image {first.path} has {total} channel(s) but the dataset declares {channels} "
            "modalities",
            fix="make every case hold the same modalities, or correct the dataset's modality list",
        )
    if case.mask is not None:
        label = read_header(case.mask, "label")
        if label.channels != 1 or label.shape != first.shape:
            raise DataError(
                f"case {case.case_id!r}: label {case.mask} has shape {label.shape}"
                f"{f' x {label.channels}' if label.channels != 1 else ''} but its image {first.path} has spatial "
                f"shape {first.shape}",
                fix="the label must be one 3D volume on the image's voxel grid",
            )
    return VolumeHeader(first.path, first.shape, total, first.affine, first.spacing)


def case_to_dict(case: Case) -> dict[str, Any]:
    """The input dictionary of the 3D pipelines for a case.

    Returns:
        ``{"image": path or [channel paths], "label": path (absent for unlabeled cases), "case_id": str}``.
    """
    files = [str(p) for p in image_files(case)]
    out: dict[str, Any] = {"image": files[0] if len(files) == 1 else files, "case_id": case.case_id}
    return out if case.mask is None else {**out, "label": str(case.mask)}


def _paths(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


class LoadVolumed:
    """Load ``"image"`` (and ``"label"`` when present) with MONAI's nibabel reader, channel first, and check them.

    Several image files (nnU-Net channel files) are stacked as channels; a 4D file's 4th axis becomes the channel
    axis. Label values are mapped to class indices with :func:`dragsaw.data.io.images.map_mask_values` (non-integer
    values are refused). A label whose affine differs from the image's by more than 1e-3 mm while its shape
    matches is used voxel-wise, as nnU-Net does, with a warning; it gets the image's affine.

    Output keys: ``"image"`` float32 MetaTensor ``[C, X, Y, Z]``, ``"label"`` MetaTensor ``[1, X, Y, Z]`` of class
    indices, ``"meta"`` ``{"affine": np.ndarray 4x4, "shape": (X, Y, Z), "path": str}`` (the file geometry), and
    with ``keep_native=True`` :data:`NATIVE_LABEL_KEY` (``"native_label"``): int64 tensor ``[X, Y, Z]`` (MONAI's
    spatial transforms would mistake a key starting with ``"label_"`` for a meta dict). Other keys pass through.

    Args:
        num_classes: K (background included) for the label check; None accepts any non-negative integer values.
        value_map: Optional {stored value: class index}, as for 2D masks.
        keep_native: Also return the label in the file's own geometry.

    Raises:
        DataError: unreadable files, NaN/Inf image voxels, unexpected label values, shape mismatches (all naming
            the file).
    """

    def __init__(
        self, num_classes: int | None = None, value_map: Mapping[int, int] | None = None, keep_native: bool = False
    ) -> None:
        if num_classes is not None:
            map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)  # validates the options
        self.num_classes = num_classes
        self.value_map = value_map
        self.keep_native = bool(keep_native)
        self._load = LoadImaged(
            keys=("image", "label"), reader="NibabelReader", image_only=True, ensure_channel_first=True,
            allow_missing_keys=True,
        )  # fmt: skip

    def _read(self, d: dict, key: str) -> MetaTensor:
        try:
            return self._load({key: d[key]})[key]
        except Exception as exc:
            raise DataError(
                f"{key} file(s) {', '.join(_paths(d[key]))} cannot be loaded ({_cause(exc)})",
                fix="check that the files are complete NIfTI volumes on one voxel grid",
            ) from exc

    def _labels(self, raw: torch.Tensor, path: str) -> torch.Tensor:
        values = np.asarray(raw)
        if not np.isfinite(values).all() or (values != np.round(values)).any() or (values < 0).any():
            bad = np.unique(values[~np.isfinite(values) | (values != np.round(values)) | (values < 0)])[:5]
            raise DataError(
                f"label file {path} holds values {bad.tolist()} that are not class indices (non-negative integers)",
                fix="store the label map as integers 0..K-1",
            )
        values = values.astype(np.int64)
        if self.num_classes is not None:
            values = map_mask_values(values, self.num_classes, self.value_map, source=path)
        return torch.from_numpy(values)

    def __call__(self, data: Mapping[str, Any]) -> dict:
        d = dict(data)
        files = _paths(d["image"])
        image = self._read(d, "image")
        flat = image.as_tensor().reshape(image.shape[0], -1)
        finite = torch.isfinite(flat).all(dim=1)
        if not bool(finite.all()):
            c = int((~finite).nonzero()[0, 0])
            where = files[c] if len(files) > 1 else f"{files[0]} (channel {c})"
            raise DataError(f"image file {where} holds NaN or Inf voxels", fix="repair or re-export the volume")
        image = image.to(torch.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
        shape = tuple(int(s) for s in image.shape[1:])
        d["image"] = image
        d["meta"] = {"affine": affine, "shape": shape, "path": files[0]}
        if "label" in d:
            path = str(d["label"])
            label = self._read(d, "label")
            if label.shape[0] != 1 or tuple(label.shape[1:]) != shape:
                raise DataError(
                    f"label file {path} has shape {tuple(label.shape[1:])} ({label.shape[0]} channel(s)) but image "
                    f"{files[0]} has spatial shape {shape}",
                    fix="pair the right files or resample the label",
                )
            if not np.allclose(np.asarray(label.affine), affine, atol=_AFFINE_ATOL):
                warnings.warn(
                    f"label file {path} and image {files[0]} have different affines; the label is used voxel-wise "
                    "on the image's grid (as nnU-Net does); check the headers if this is unexpected",
                    UserWarning,
                    stacklevel=2,
                )
            values = self._labels(label.as_tensor()[0], path)
            label = MetaTensor(values[None].to(torch.float32), meta=dict(label.meta))
            label.affine = image.affine.clone()
            d["label"] = label
            if self.keep_native:  # MONAI's Spacingd treats keys "label_*" as meta dicts: another name until the end
                d[NATIVE_LABEL_KEY] = values.clone()
        return d


def _cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost exception (MONAI's loader wraps the reader's error with tracebacks)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
