"""Volumes: headers and checked loading (MONAI readers); writing and mapping back in ``geometry``.

Conventions:

* A volume case is a :class:`~dragsaw.data.cases.Case` whose image is one volume (3D, or for NIfTI 4D with the
  channels on the 4th axis as in the Medical Segmentation Decathlon) or, in the nnU-Net raw layout, one 3D volume
  per channel listed in ``case.extra["channels"]``. Its mask is a 3D label map of class indices.
* A volume is a NIfTI file, or with ``pip install 'dragsaw[formats]'`` a NRRD file, a DICOM series folder or a
  MetaImage file (:mod:`dragsaw.data.io.formats`). Every format is read by its MONAI reader with the affine in RAS
  (MONAI converts NRRD/DICOM/MetaImage's LPS), so a volume and its NIfTI twin give the same arrays and affines.
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
from dragsaw.data.io.formats import DICOM, NIFTI, NRRD, VolumeFormat, match_volume_format, volume_format
from dragsaw.data.io.geometry import NIFTI_SUFFIXES, nifti_stem, to_original_geometry, write_nifti
from dragsaw.data.io.labels import map_mask_values
from dragsaw.errors import DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "VolumeHeader",
    "nifti_stem",
    "read_header",
    "read_nrrd_header",
    "read_dicom_series_header",
    "volume_format_of",
    "read_voxels",
    "image_files",
    "check_case_geometry",
    "case_to_dict",
    "LoadVolumed",
    "NATIVE_LABEL_KEY",
    "to_original_geometry",
    "write_nifti",
]

NATIVE_LABEL_KEY = "native_label"
"""Key of the label in the file's own geometry inside the preprocessing pipeline (renamed ``"label_native"`` at
its end)."""

_AFFINE_ATOL = 1e-3  # mm: image and label affines closer than this are "the same grid"


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of one volume, read from its header(s) only (no voxel data).

    Attributes:
        path: The file (the folder of a DICOM series).
        shape: Spatial shape ``(X, Y, Z)`` in file voxel order.
        channels: 1 for a 3D file, the 4th dimension for a 4D file.
        affine: Voxel -> world (RAS mm) 4x4 float64 matrix, as nibabel reports it (sform, else qform) for NIfTI,
            as MONAI's reader computes it (LPS converted to RAS) for the other formats.
        spacing: Voxel sizes in mm per file axis (the affine's column norms: the header's pixdim).
        format: The volume format's name (``"NIfTI"``, ``"NRRD"``, ``"DICOM series"``, ``"MetaImage"``).
    """

    path: Path
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    spacing: tuple[float, float, float]
    format: str = NIFTI.name


def read_header(path: str | Path, what: str = "image") -> VolumeHeader:
    """Read a volume's geometry without loading its voxels.

    NIfTI with nibabel; NRRD with ``nrrd.read_header``; a DICOM series with ``pydicom.dcmread(...,
    stop_before_pixels=True)`` for every slice; MetaImage with ITK's ImageIO (information only). The affine is the
    one dragsaw's loader (:class:`LoadVolumed`) gives the loaded volume.

    Args:
        path: A volume file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) or a DICOM series
            folder.
        what: Word used in error messages ("image", "label", "channel").

    Returns:
        The header; ``shape`` ``(X, Y, Z)`` in the loaded array's axis order.

    Raises:
        DataError: missing or empty file; not a volume format (the message lists the supported ones); the
            format's package not installed (fix: ``pip install 'dragsaw[formats]'``); unreadable header; not 3D
            (or 4D NIfTI); singular or non-finite affine; a DICOM folder with several series, missing slices or
            slices that disagree (see :func:`read_dicom_series_header`).
    """
    if not Path(path).is_dir():
        path = require_file(path, what, empty_fix="re-download or re-extract it")
    path = Path(path)
    fmt = volume_format(path, what)
    if fmt is NIFTI:
        shape, affine = _nifti_geometry(path, what)
    elif fmt is NRRD:
        shape, affine = _nrrd_geometry(path, what)
    elif fmt is DICOM:
        shape, affine = read_dicom_series_header(path, what)
    else:
        shape, affine = _itk_geometry(path, what)
    if len(shape) not in (3, 4):
        raise DataError(f"{what} file {path} has shape {shape}; expected 3D, or 4D with the channels on the 4th axis")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{what} file {path} has an invalid affine {affine.tolist()}", fix="repair its header")
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return VolumeHeader(path, shape[:3], shape[3] if len(shape) == 4 else 1, affine, spacing,  # type: ignore[arg-type]
                        fmt.name)


def _nifti_geometry(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, ... for bad files
        raise DataError(
            f"{what} file {path} cannot be read as NIfTI ({type(exc).__name__}: {exc})",
            fix="re-download or re-export it",
        ) from exc
    return shape, affine


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NRRD_SPACES = {None: True, "left-posterior-superior": True}
"""NRRD ``space`` values dragsaw accepts -> whether MONAI's NrrdReader flips the affine from LPS to RAS (MONAI 1.6
flips for these two and fails on ``right-anterior-superior``; it would leave other spaces unconverted)."""


def read_nrrd_header(path: str | Path, what: str = "image") -> dict[str, Any]:
    """The header of a NRRD file as pynrrd parses it (``"sizes"``, ``"space directions"``, ...), data not read.

    For a detached header (``.nhdr``) the data file it names must exist.

    Raises:
        DataError: unreadable header, or a detached data file that does not exist.
    """
    import nrrd

    path = Path(path)
    try:
        header = dict(nrrd.read_header(str(path)))
    except Exception as exc:  # pynrrd raises NRRDError, UnicodeDecodeError, ... for bad files
        raise DataError(f"{what} file {path} cannot be read as NRRD ({type(exc).__name__}: {exc})",
                        fix="re-download or re-export it") from exc
    data_file = header.get("data file", header.get("datafile"))
    if isinstance(data_file, str) and data_file.upper() != "LIST" and "%" not in data_file:
        target = Path(data_file) if Path(data_file).is_absolute() else path.parent / data_file
        if not target.is_file():
            raise DataError(f"{what} file {path} names the data file {target}, which does not exist",
                            fix="keep the .nhdr header next to its data file, or save one .nrrd file")
    return header


def _nrrd_geometry(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape ``(X, Y, Z)`` and RAS affine of a 3D NRRD file, as MONAI's ``NrrdReader`` (Fortran order) gives them."""
    header = read_nrrd_header(path, what)
    fix = "save it as one 3D volume with 'space directions' and 'space origin' (e.g. with 3D Slicer or SimpleITK)"
    sizes = tuple(int(s) for s in np.atleast_1d(header.get("sizes", ())))
    directions = header.get("space directions")
    origin = header.get("space origin")
    if len(sizes) != 3 or directions is None or origin is None:
        raise DataError(f"{what} file {path} is NRRD of sizes {sizes} with space directions "
                        f"{'set' if directions is not None else 'missing'} and space origin "
                        f"{'set' if origin is not None else 'missing'}; dragsaw reads 3D NRRD volumes with both",
                        fix=fix)
    space = header.get("space")
    if space not in _NRRD_SPACES:
        raise DataError(f"{what} file {path} has the NRRD space {space!r}; dragsaw reads NRRD in "
                        "'left-posterior-superior' space (as MONAI's NrrdReader does)",
                        fix="save it in left-posterior-superior (LPS) space, or convert it to NIfTI")
    directions = np.asarray(directions, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64).reshape(-1)
    if directions.shape != (3, 3) or origin.shape != (3,):
        raise DataError(f"{what} file {path} has space directions of shape {directions.shape} and an origin of "
                        f"{origin.size} values; expected 3 x 3 and 3", fix=fix)
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # pynrrd: one row per axis
    affine[:3, 3] = origin
    return sizes, (_LPS_TO_RAS @ affine if _NRRD_SPACES[space] else affine)


def read_dicom_series_header(folder: str | Path, what: str = "image") -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the DICOM series in ``folder``, read without pixel data, its slices checked.

    The slices are every visible DICOM file of the folder (as MONAI's ``PydicomReader`` takes them), in
    ``InstanceNumber`` order. Array axes as MONAI gives them (``swap_ij``): X along a row (``ImageOrientationPatient``
    [:3], spacing ``PixelSpacing[1]``), Y along a column (``[3:]``, ``PixelSpacing[0]``), Z from the first slice's
    ``ImagePositionPatient`` to the last's in equal steps.

    Returns:
        ``((Columns, Rows, slices), affine)``; the affine is 4x4 float64, RAS.

    Raises:
        DataError: naming the folder or slice: a ``.dcm`` file that is not DICOM or cannot be read, fewer than two
            slices, several series (``SeriesInstanceUID``), a slice without InstanceNumber, ImagePositionPatient,
            ImageOrientationPatient or PixelSpacing, repeated InstanceNumbers, slices of different size,
            orientation or pixel spacing, multi-frame or multi-sample slices, or slice positions that are not
            evenly spaced (a missing slice).
    """
    import pydicom
    from pydicom.misc import is_dicom

    folder = Path(folder)
    fix = "re-export the complete series: one series per folder, every slice"
    slices = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dicom = is_dicom(str(file))
            if not dicom and file.suffix.lower() == DICOM.folder_of:
                raise ValueError("no DICM marker after the 128-byte preamble")
            if dicom:
                slices.append((file, pydicom.dcmread(str(file), stop_before_pixels=True)))
        except Exception as exc:  # InvalidDicomError, EOFError, OSError, ...
            raise DataError(f"{what} series {folder}: slice {file.name} cannot be read as DICOM "
                            f"({type(exc).__name__}: {exc})", fix=fix) from exc
    if len(slices) < 2:
        raise DataError(f"{what} series {folder} holds {len(slices)} DICOM slice(s); a volume needs at least 2",
                        fix=fix)
    series: dict[str, list[str]] = {}
    for file, ds in slices:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "<none>")), []).append(file.name)
    if len(series) > 1:
        shown = "; ".join(f"{uid}: {len(names)} slice(s), e.g. {names[0]}" for uid, names in series.items())
        raise DataError(f"{what} series {folder} mixes {len(series)} DICOM series ({shown})",
                        fix="put each series (SeriesInstanceUID) in its own folder")
    need = ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
    for file, ds in slices:
        missing = [k for k in need if getattr(ds, k, None) is None]
        if missing:
            raise DataError(f"{what} series {folder}: slice {file.name} has no {', '.join(missing)}", fix=fix)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 or int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
            raise DataError(f"{what} series {folder}: slice {file.name} is multi-frame or has several samples per "
                            "pixel; dragsaw reads series of single-frame grayscale slices",
                            fix="export the series as one grayscale file per slice")
    slices.sort(key=lambda fd: int(fd[1].InstanceNumber))
    numbers = [int(ds.InstanceNumber) for _, ds in slices]
    if len(set(numbers)) != len(numbers):
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        raise DataError(f"{what} series {folder} repeats InstanceNumber(s) {twice[:5]}", fix=fix)
    first_file, first = slices[0]
    ref = (int(first.Rows), int(first.Columns), np.asarray(first.ImageOrientationPatient, dtype=np.float64),
           np.asarray(first.PixelSpacing, dtype=np.float64))
    for file, ds in slices[1:]:
        if (int(ds.Rows), int(ds.Columns)) != ref[:2] or not np.allclose(
                np.asarray(ds.ImageOrientationPatient, dtype=np.float64), ref[2], atol=1e-4) or not np.allclose(
                np.asarray(ds.PixelSpacing, dtype=np.float64), ref[3], atol=1e-4):
            raise DataError(
                f"{what} series {folder}: slice {file.name} ({ds.Rows} x {ds.Columns}, orientation "
                f"{list(map(float, ds.ImageOrientationPatient))}, pixel spacing {list(map(float, ds.PixelSpacing))}) "
                f"differs from slice {first_file.name} ({ref[0]} x {ref[1]}, {ref[2].tolist()}, {ref[3].tolist()})",
                fix=fix)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for _, ds in slices])
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    expected = positions[0] + np.arange(len(slices))[:, None] * step
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    if np.linalg.norm(step) < 1e-6 or np.abs(positions - expected).max() > 0.01 * np.linalg.norm(step) + 1e-4:
        shown = sorted({round(float(g), 4) for g in gaps})
        raise DataError(f"{what} series {folder}: its {len(slices)} slices (in InstanceNumber order) are not evenly "
                        f"spaced: distances between neighbours {shown[:6]} mm; a slice is missing, repeated or out "
                        "of order", fix=fix)
    orient, (row_spacing, col_spacing) = ref[2], ref[3]
    affine = np.eye(4)
    affine[:3, 0] = orient[:3] * col_spacing  # along a row: the column index, spacing between columns
    affine[:3, 1] = orient[3:] * row_spacing  # along a column: the row index
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return (ref[1], ref[0], len(slices)), _LPS_TO_RAS @ affine


def _itk_geometry(path: Path, what: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine of a MetaImage file from ITK's ImageIO (image information only, no pixels)."""
    import itk

    try:
        io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        io.SetFileName(str(path))
        io.ReadImageInformation()
        ndim = int(io.GetNumberOfDimensions())
        shape = tuple(int(io.GetDimensions(i)) for i in range(ndim))
        components = int(io.GetNumberOfComponents())
        affine = np.eye(4)
        if len(shape) == 3:
            for i in range(3):
                affine[:3, i] = np.asarray(io.GetDirection(i), dtype=np.float64) * float(io.GetSpacing(i))
            affine[:3, 3] = [float(io.GetOrigin(i)) for i in range(3)]
    except Exception as exc:  # ITK raises RuntimeError for unreadable files
        raise DataError(f"{what} file {path} cannot be read as MetaImage ({type(exc).__name__}: {exc})",
                        fix="re-download or re-export it") from exc
    if len(shape) != 3 or components != 1:
        raise DataError(f"{what} file {path} is MetaImage of size {shape} with {components} component(s) per voxel",
                        fix="save one 3D single-component volume per file")
    return shape, _LPS_TO_RAS @ affine


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


def read_voxels(path: str | Path, what: str = "image") -> np.ndarray:
    """The voxels of one volume as :class:`LoadVolumed` reads them (same MONAI reader), without any check.

    Returns:
        ``[X, Y, Z]`` (3D) or ``[C, X, Y, Z]`` (a 4D NIfTI file), float32 as MONAI's reader gives it, in the
        file's voxel order.

    Raises:
        DataError: unknown format or missing package, an invalid DICOM series, or a file that cannot be decoded.
    """
    key = what if what in ("image", "label") else "image"  # the loader's keys
    item = LoadVolumed()._read({key: str(path)}, key)
    array = np.asarray(item.as_tensor())
    return array[0] if array.shape[0] == 1 else array


def volume_format_of(paths: Any, what: str = "image") -> VolumeFormat:
    """The one format of a path or list of paths (nnU-Net channel files) that :class:`LoadVolumed` reads with.

    A name that matches no format is read as NIfTI (nibabel then says why it cannot be read), as before other
    formats were supported.

    Raises:
        DataError: the paths mix formats, or the format's package is not installed.
    """
    files = _paths(paths)
    found = [match_volume_format(f) or NIFTI for f in files]
    if any(f is not found[0] for f in found):
        raise DataError(f"{what} files {', '.join(files)} mix the formats {sorted({f.name for f in found})}",
                        fix="store every channel file of a case in one format")
    return found[0] if found[0] is NIFTI else volume_format(files[0], what)


class LoadVolumed:
    """Load ``"image"`` (and ``"label"`` when present) with the MONAI reader of their format, channel first, and
    check them.

    The reader is picked per key from the file names (:mod:`dragsaw.data.io.formats`): NIfTI with
    ``NibabelReader``, NRRD with ``NrrdReader``, DICOM series folders with ``PydicomReader`` (after
    :func:`read_dicom_series_header` has checked the slices), MetaImage with ``ITKReader``; MONAI gives every one
    a RAS affine. Several image files (nnU-Net channel files) are stacked as channels; a 4D file's 4th axis becomes
    the channel axis. Label values are mapped to class indices with :func:`dragsaw.data.io.images.map_mask_values`
    (non-integer values are refused). A label whose affine differs from the image's by more than 1e-3 mm while its
    shape matches is used voxel-wise, as nnU-Net does, with a warning; it gets the image's affine.

    Output keys: ``"image"`` float32 MetaTensor ``[C, X, Y, Z]``, ``"label"`` MetaTensor ``[1, X, Y, Z]`` of class
    indices, ``"meta"`` ``{"affine": np.ndarray 4x4, "shape": (X, Y, Z), "path": str}`` (the file geometry), and
    with ``keep_native=True`` :data:`NATIVE_LABEL_KEY` (``"native_label"``): int64 tensor ``[X, Y, Z]`` (MONAI's
    spatial transforms would mistake a key starting with ``"label_"`` for a meta dict). Other keys pass through.

    Args:
        num_classes: K (background included) for the label check; None accepts any non-negative integer values.
        value_map: Optional {stored value: class index}, as for 2D masks.
        keep_native: Also return the label in the file's own geometry.

    Raises:
        DataError: unreadable files, a format whose package is missing, NaN/Inf image voxels, unexpected label
            values, shape mismatches (all naming the file).
    """

    def __init__(
        self, num_classes: int | None = None, value_map: Mapping[int, int] | None = None, keep_native: bool = False
    ) -> None:
        if num_classes is not None:
            map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)  # validates the options
        self.num_classes = num_classes
        self.value_map = value_map
        self.keep_native = bool(keep_native)
        self._loads: dict[str, LoadImaged] = {}

    def _loader(self, fmt: VolumeFormat) -> LoadImaged:
        if fmt.reader not in self._loads:
            with warnings.catch_warnings():  # MONAI instantiates every reader it knows; with pydicom installed, its
                # GPU DICOM reader warns that nvImageCodec is missing, which dragsaw never uses
                warnings.filterwarnings("ignore", message=".*nvImageCodec", category=UserWarning)
                self._loads[fmt.reader] = LoadImaged(
                    keys=("image", "label"), reader=fmt.reader, image_only=True, ensure_channel_first=True,
                    allow_missing_keys=True,
                )  # fmt: skip
        return self._loads[fmt.reader]

    def _read(self, d: dict, key: str) -> MetaTensor:
        fmt = volume_format_of(d[key], key)
        # MONAI stacks whatever a DICOM folder holds: check the series first, and its affine after
        heads = [read_dicom_series_header(f, key)[1] for f in _paths(d[key])] if fmt is DICOM else []
        try:
            loaded = self._loader(fmt)({key: d[key]})[key]
        except Exception as exc:
            kind = "NIfTI volumes" if fmt is NIFTI else f"{fmt.name} volumes"
            raise DataError(
                f"{key} file(s) {', '.join(_paths(d[key]))} cannot be loaded ({_cause(exc)})",
                fix=f"check that the files are complete {kind} on one voxel grid",
            ) from exc
        if heads and not np.allclose(np.asarray(loaded.affine, dtype=np.float64), heads[0], atol=_AFFINE_ATOL):
            raise DataError(
                f"{key} series {_paths(d[key])[0]}: MONAI's PydicomReader gives the affine "
                f"{np.asarray(loaded.affine).round(4).tolist()} but the slices' ImagePositionPatient, "
                f"ImageOrientationPatient and PixelSpacing give {heads[0].round(4).tolist()} (MONAI drops tags whose "
                "values are not valid DICOM, e.g. decimal strings longer than 16 characters)",
                fix="re-export the series with valid DICOM geometry tags, or convert it to NIfTI",
            )
        return loaded

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
