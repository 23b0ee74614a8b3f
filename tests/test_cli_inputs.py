"""What ``dragsaw predict`` takes from an input folder: files, DICOM series folders, detached headers' data files
left out; and a DICOM series predicted from the command line like its NIfTI twin."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from dragsaw.cli import input_files
from dragsaw.data import write_decathlon

from _cli import run_cli, train_argv


def test_input_files_of_a_folder(tmp_path):
    for name in ("a.png", "b.nhdr", "b.raw.gz", "case.1.mhd", "case.1.raw", "c.raw", "d.nii.gz", "old_mask.png",
                 ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "s1.dcm").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_bytes(b"x")
    got = [p.name for p in input_files(tmp_path, skip={"old_mask.png"})]
    # c.raw has no header of its own: it is an input (and predict reports it as one it cannot read)
    assert got == ["a.png", "b.nhdr", "c.raw", "case.1.mhd", "d.nii.gz", "series"]


@pytest.mark.slow
def test_predict_a_dicom_series_folder_like_its_nifti_twin(tmp_path):
    pytest.importorskip("pydicom")
    from data._formats3d import write_dicom_series

    task = write_decathlon(tmp_path / "Task01", n_train=5, n_test=1, shape=(48, 48, 32), seed=3, modalities=1)
    run = tmp_path / "run"
    assert run_cli(train_argv(3, task, run)).code == 0
    source = sorted((task / "imagesTs").glob("*.nii.gz"))[0]
    img = nib.load(str(source))
    array = np.asarray(img.dataobj).astype(np.int16)
    inputs = tmp_path / "inputs"
    series, affine = write_dicom_series(inputs / "scan7", array, img.affine)
    twin = tmp_path / "twin"
    twin.mkdir()
    nib.Nifti1Image(array, affine).to_filename(str(twin / "scan7.nii.gz"))
    for folder, out in ((inputs, "from-dicom"), (twin, "from-nifti")):  # the folder holding the series folder
        result = run_cli(["predict", str(run), str(folder), "--out", str(tmp_path / out)])
        assert result.code == 0, result.err
    a = nib.load(str(tmp_path / "from-dicom" / "scan7_seg.nii.gz"))
    b = nib.load(str(tmp_path / "from-nifti" / "scan7_seg.nii.gz"))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    assert np.allclose(a.affine, b.affine, atol=1e-5) and a.shape == array.shape
