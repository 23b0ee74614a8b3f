"""Helpers of the volume-format tests: NRRD files (pynrrd) and DICOM series (pydicom) written from scratch, each
with the RAS affine of a NIfTI twin, and a Decathlon task folder converted to NRRD."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def write_nrrd(path: Path, array: np.ndarray, ras_affine: np.ndarray, *, space: str = "left-posterior-superior",
               **options) -> Path:
    """A 3D NRRD file of ``array`` ``[X, Y, Z]`` whose header gives ``ras_affine`` (stored in LPS space)."""
    import nrrd

    lps = LPS @ ras_affine if space == "left-posterior-superior" else ras_affine
    header = {"space": space, "space directions": lps[:3, :3].T.copy(), "space origin": lps[:3, 3].copy()}
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.asarray(array), header, index_order="F", **options)
    return path


def write_dicom_series(folder: Path, array: np.ndarray, ras_affine: np.ndarray, *, series_uid: str | None = None,
                       first_number: int = 1, skip: tuple[int, ...] = (), prefix: str = "slice"
                       ) -> tuple[Path, np.ndarray]:
    """One DICOM file per slice ``array[:, :, k]`` (int16, explicit VR little endian) whose geometry gives
    ``ras_affine``: X runs along a row, Y along a column, Z from slice to slice. ``skip`` leaves slices out.

    Returns the folder and the RAS affine the files hold: ``ras_affine`` with the values rounded to 6 decimals
    (DICOM decimal strings hold at most 16 characters)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    lps = LPS @ ras_affine
    col_spacing, row_spacing = (round(float(np.linalg.norm(lps[:3, i])), 6) for i in (0, 1))
    orientation = np.round(np.concatenate([lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing]), 6) + 0.0
    step, origin = np.round(lps[:3, 2], 6) + 0.0, np.round(lps[:3, 3], 6) + 0.0
    held = np.eye(4)
    held[:3, 0], held[:3, 1] = orientation[:3] * col_spacing, orientation[3:] * row_spacing
    held[:3, 2], held[:3, 3] = step, origin
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array, dtype=np.int16)
    for k in range(data.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Test^Tiny", "tiny"
        ds.InstanceNumber = first_number + k
        ds.ImagePositionPatient = [round(float(v), 6) + 0.0 for v in origin + k * step]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.SliceThickness = round(float(np.linalg.norm(step)), 6)
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()  # rows x columns
        ds.save_as(str(folder / f"{prefix}_{k:03d}.dcm"), enforce_file_format=True)
    return folder, LPS @ held


def nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def task_to_nrrd(src: Path, dst: Path) -> Path:
    """A copy of the task folder ``src`` (3D NIfTI files, e.g. ``write_task(..., layout="nnunet")``) with every
    volume written as NRRD and dataset.json renamed to match."""
    for path in sorted(src.rglob("*.nii.gz")):
        img = nib.load(str(path))
        out = dst / path.relative_to(src).parent / (path.name[: -len(".nii.gz")] + ".nrrd")
        write_nrrd(out, np.asarray(img.dataobj), img.affine)
    meta = json.loads((src / "dataset.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "dataset.json").write_text(json.dumps(meta).replace(".nii.gz", ".nrrd"), encoding="utf-8")
    return dst
