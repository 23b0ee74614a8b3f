"""Inference input detection for the volume formats besides NIfTI (the outputs stay NIfTI)."""

from __future__ import annotations

import numpy as np
import pytest

from dragsaw.data.readers import VolumeReader
from dragsaw.errors import DataError
from dragsaw.inference.outputs import check_input_file as _check_file, outputs_for as _outputs

from data._formats3d import nifti, write_dicom_series, write_nrrd
from data._volumes3d import make_affine, make_volume


@pytest.fixture
def volumes(tmp_path):
    pytest.importorskip("nrrd")
    pytest.importorskip("pydicom")
    image, _ = make_volume((12, 10, 6), channels=1)
    image = np.rint(image[..., 0]).astype(np.int16)
    folder, affine = write_dicom_series(tmp_path / "series_7", image, make_affine())
    return {"nrrd": write_nrrd(tmp_path / "a.nrrd", image, affine), "dicom": folder,
            "nifti": nifti(tmp_path / "a.nii.gz", image, affine)}


def test_volume_hooks_accept_every_format(volumes):
    out3, out2 = _outputs(3), _outputs(2)
    for key, path in volumes.items():
        assert out3.accepts(path) and not out2.accepts(path), key
        _check_file(path)
        out3.check_input(path, 1)
    assert out3.stem(volumes["nrrd"]) == "a" and out3.stem(volumes["dicom"]) == "series_7"
    assert out3.names(volumes["dicom"], 3, True, False) == ["series_7_seg.nii.gz", "series_7_uncertainty.nii.gz"]
    with pytest.raises(DataError, match="1 channel\\(s\\) but this run's model takes 2-channel"):
        out3.check_input(volumes["nrrd"], 2)


def test_prediction_inputs_read_like_nifti(volumes):
    reader = VolumeReader(num_classes=3, target_spacing=(1.5, 1.0, 2.5), modalities=["MRI"], patch_size=(8, 8, 4))
    ref = reader.read_input(volumes["nifti"])
    for key in ("nrrd", "dicom"):
        item = reader.read_input(volumes[key])
        np.testing.assert_array_equal(np.asarray(item["image"]), np.asarray(ref["image"]))
        np.testing.assert_allclose(item["meta"]["affine"], ref["meta"]["affine"], rtol=0, atol=1e-6)
        assert item["meta"]["shape"] == ref["meta"]["shape"]
