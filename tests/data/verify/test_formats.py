"""Verification of volumes in the formats besides NIfTI: the same findings, naming the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest

import dragsaw.data.io.formats as formats
from dragsaw.data.cases import Case
from dragsaw.data.verify import verify_cases

from .._formats3d import write_dicom_series, write_nrrd
from .._volumes3d import make_affine, make_volume


def _data():
    image, label = make_volume((12, 10, 6), channels=1)
    return np.rint(image[..., 0]).astype(np.int16), label


def _errors(case: Case, quick: bool = False):
    return verify_cases({"train": [case]}, num_classes=3, quick=quick).of_level("error")


def test_good_nrrd_case_passes(tmp_path):
    pytest.importorskip("nrrd")
    image, label = _data()
    case = Case("v", write_nrrd(tmp_path / "v.nrrd", image, make_affine()),
                write_nrrd(tmp_path / "v_label.nrrd", label, make_affine()))
    report = verify_cases({"train": [case]}, num_classes=3)
    assert report.worst in ("ok", "info") and report.counts["decoded_cases"] == 1
    assert report.counts["sizes"] == {"12x10x6": 1}


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("kind", ["truncated_raw", "truncated_gzip", "garbage", "shape", "labels"])
def test_nrrd_problems(tmp_path, kind, quick):
    pytest.importorskip("nrrd")
    image, label = _data()
    options = {"compression_level": 0} if kind == "truncated_raw" else {}
    img = write_nrrd(tmp_path / "v.nrrd", image, make_affine(), **options)
    lab = write_nrrd(tmp_path / "v_label.nrrd", label[:, :, :-1] if kind == "shape" else label * (
        7 if kind == "labels" else 1), make_affine())
    if kind.startswith("truncated"):
        img.write_bytes(img.read_bytes()[:-100])
    elif kind == "garbage":
        img.write_text("<html>404</html>")
    errors = _errors(Case("v", img, lab), quick=quick)
    assert errors, kind
    expect = {"truncated_raw": (img, "truncated"), "truncated_gzip": (img, "unreadable voxel data"),
              "garbage": (img, "cannot be read as NRRD"), "shape": (lab, "has shape"),
              "labels": (lab, "")}[kind]
    assert errors[0].file == str(expect[0]) and expect[1] in errors[0].what and errors[0].fix


def test_dicom_mixed_series_and_missing_package(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    image, label = _data()
    folder = tmp_path / "s"
    write_dicom_series(folder, image[:, :, :3], make_affine())
    write_dicom_series(folder, image[:, :, 3:], make_affine(), first_number=4, prefix="other")
    errors = _errors(Case("s", folder, None))
    assert errors[0].file == str(folder) and "mixes 2 DICOM series" in errors[0].what
    assert "own folder" in errors[0].fix
    monkeypatch.setattr(formats, "module_available", lambda module: module != "pydicom")
    errors = _errors(Case("s", folder, None))
    assert "'pydicom'" in errors[0].what and errors[0].fix == "pip install 'dragsaw[formats]'"


def test_metaimage_without_itk(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "module_available", lambda module: module != "itk")
    path = tmp_path / "v.mha"
    path.write_text("ObjectType = Image\n")
    errors = _errors(Case("v", path, None))
    assert errors[0].file == str(path) and "'itk'" in errors[0].what
    assert errors[0].fix == "pip install 'dragsaw[itk]'"
