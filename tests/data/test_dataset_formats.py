"""The real dataset path with other volume formats: a tiny Decathlon (nnU-Net raw) task folder written as NRRD, and
one with a DICOM series per image, read by dragsaw.data exactly as its NIfTI original, and checked by verify."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from dragsaw.data.adapters.decathlon import dataset_properties, decathlon
from dragsaw.data.dataset import SegmentationDataset
from dragsaw.data.readers import VolumeReader
from dragsaw.data.verify import verify_cases, verify_dataset

from ._formats3d import task_to_nrrd, write_dicom_series
from ._volumes3d import write_task

COMMON = dict(num_classes=3, target_spacing=(1.5, 1.0, 2.5), modalities=None, patch_size=(12, 12, 8))


def _same_items(a_cases, b_cases) -> None:
    a_ds = SegmentationDataset(a_cases, VolumeReader(**COMMON), train=False)
    b_ds = SegmentationDataset(b_cases, VolumeReader(**COMMON), train=False)
    assert a_ds.channels == b_ds.channels
    for i in range(len(a_ds)):
        a, b = a_ds[i], b_ds[i]
        assert a["case_id"] == b["case_id"]
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())
        np.testing.assert_array_equal(a["label_native"].numpy(), b["label_native"].numpy())
        np.testing.assert_allclose(a["meta"]["affine"], b["meta"]["affine"], rtol=0, atol=1e-6)
        assert a["meta"]["shape"] == b["meta"]["shape"]


def test_nrrd_task_reads_like_its_nifti_original(tmp_path):
    pytest.importorskip("nrrd")
    src = write_task(tmp_path / "nii", n_train=2, layout="nnunet")
    dst = task_to_nrrd(src, tmp_path / "nrrd")
    a, b = decathlon(dst)["train"], decathlon(src)["train"]
    assert [c.case_id for c in a] == [c.case_id for c in b] == ["case_000", "case_001"]
    assert a[0].extra["layout"] == "nnunet" and a[0].image.suffix == ".nrrd"
    pa, pb = dataset_properties(a), dataset_properties(b)
    np.testing.assert_allclose(pa["target_spacing"], pb["target_spacing"], rtol=0, atol=1e-6)
    assert pa["median_shape"] == pb["median_shape"]
    _same_items(a, b)
    report = verify_dataset("decathlon", dst, num_classes=3)
    assert report.worst in ("ok", "info"), report.format()
    assert report.counts["decoded_cases"] == 2


def test_dicom_task_reads_like_its_nifti_original(tmp_path):
    pytest.importorskip("pydicom")
    src = write_task(tmp_path / "nii", n_train=2, modalities=("MRI",))
    dst = tmp_path / "dcm"
    meta = json.loads((src / "dataset.json").read_text())
    for entry in meta["training"]:  # each image a DICOM series folder (int16 voxels, geometry rounded)
        img = nib.load(str(src / entry["image"]))
        name = entry["image"].removeprefix("./imagesTr/").removesuffix(".nii.gz")
        _, affine = write_dicom_series(dst / "imagesTr" / name, np.rint(np.asarray(img.dataobj)), img.affine)
        nib.save(nib.Nifti1Image(np.rint(np.asarray(img.dataobj)).astype(np.int16), affine), str(src / entry["image"]))
        (dst / "labelsTr").mkdir(parents=True, exist_ok=True)
        label = nib.load(str(src / entry["label"]))
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), str(dst / entry["label"]))
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), str(src / entry["label"]))
        entry["image"] = f"./imagesTr/{name}"
    (dst / "dataset.json").write_text(json.dumps(meta))
    a, b = decathlon(dst)["train"], decathlon(src)["train"]
    assert a[0].image.is_dir() and a[0].case_id == "case_000"
    _same_items(a, b)
    assert verify_cases({"train": a}, num_classes=3).worst in ("ok", "info")
    shutil.rmtree(a[1].image)
    write_dicom_series(a[1].image, np.zeros((24, 20, 16)), np.eye(4), skip=(5,))  # a missing slice
    report = verify_cases({"train": a}, num_classes=3)
    errors = report.of_level("error")
    assert errors and errors[0].file == str(a[1].image) and "not evenly spaced" in errors[0].what
