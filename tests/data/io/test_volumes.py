from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from .._volumes3d import SPACING, make_affine, make_volume, save

import dragsaw.data.io.volumes as io3d
from dragsaw.data.cases import Case
from dragsaw.data.io.volumes import LoadVolumed, case_to_dict, read_header, to_original_geometry, write_nifti
from dragsaw.data.transforms.volumes import preprocess_transforms
from dragsaw.errors import ConfigError, DataError


def _case(tmp_path, image, label, affine=None, name="c0", channels_files=False):
    affine = make_affine() if affine is None else affine
    if channels_files:
        files = tuple(save(tmp_path / f"{name}_{c:04d}.nii.gz", image[..., c], affine) for c in range(image.shape[-1]))
        extra = {"channels": files}
        first = files[0]
    else:
        first, extra = save(tmp_path / f"{name}.nii.gz", image, affine), {}
    return Case(name, first, save(tmp_path / f"{name}_label.nii.gz", label, affine), extra)


def test_read_header_matches_nibabel(tmp_path):
    image, _ = make_volume()
    path = save(tmp_path / "v.nii.gz", image, make_affine())
    head = read_header(path)
    assert head.shape == (24, 20, 16) and head.channels == 2
    np.testing.assert_allclose(head.spacing, nib.load(str(path)).header.get_zooms()[:3], rtol=1e-6)
    np.testing.assert_allclose(head.affine, make_affine(), atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_nifti", "garbage"])
def test_read_header_errors(tmp_path, kind):
    path = tmp_path / ("v.txt" if kind == "not_nifti" else "v.nii.gz")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind in ("not_nifti", "garbage"):
        path.write_bytes(b"not a volume at all")
    pattern = {"missing": "does not exist", "empty": "is empty", "not_nifti": "not a NIfTI file",
               "garbage": "cannot be read as NIfTI"}[kind]  # fmt: skip
    with pytest.raises(DataError, match=pattern):
        read_header(path)


@pytest.mark.parametrize("per_channel_files", [False, True])
def test_load_stacks_channels_and_keeps_file_geometry(tmp_path, per_channel_files):
    image, label = make_volume()
    case = _case(tmp_path, image, label, channels_files=per_channel_files)
    d = LoadVolumed(num_classes=3, keep_native=True)(case_to_dict(case))
    assert d["image"].shape == (2, 24, 20, 16)
    np.testing.assert_array_equal(d["image"].numpy(), np.moveaxis(image, -1, 0))
    np.testing.assert_array_equal(d[io3d.NATIVE_LABEL_KEY].numpy(), label)
    np.testing.assert_allclose(d["meta"]["affine"], make_affine(), atol=1e-5)
    assert d["meta"]["shape"] == (24, 20, 16) and d["meta"]["path"] == str(case.image)


@pytest.mark.parametrize("per_channel_files", [False, True])
def test_nan_image_is_refused_naming_the_file(tmp_path, per_channel_files):
    image, label = make_volume()
    image[3, 4, 5, 1] = np.nan
    case = _case(tmp_path, image, label, channels_files=per_channel_files)
    where = r"c0_0001\.nii\.gz" if per_channel_files else r"c0\.nii\.gz \(channel 1\)"
    with pytest.raises(DataError, match=rf"image file .*{where} holds NaN or Inf"):
        LoadVolumed(num_classes=3)(case_to_dict(case))


def test_label_value_outside_the_classes_is_refused(tmp_path):
    image, label = make_volume()
    label[0, 0, 0] = 7
    case = _case(tmp_path, image, label)
    with pytest.raises(DataError, match=r"mask file .*c0_label\.nii\.gz has values \{7\} .* 3-class task"):
        LoadVolumed(num_classes=3)(case_to_dict(case))
    LoadVolumed(num_classes=8)(case_to_dict(case))  # fine with enough classes


def test_non_integer_labels_are_refused_and_binary_255_is_mapped(tmp_path):
    image, label = make_volume()
    case = _case(tmp_path, image, label.astype(np.float32) * 0.5)
    with pytest.raises(DataError, match="not class indices"):
        LoadVolumed(num_classes=3)(case_to_dict(case))
    binary = (label > 0).astype(np.uint8) * 255
    case = _case(tmp_path, image, binary, name="c1")
    d = LoadVolumed(num_classes=2, keep_native=True)(case_to_dict(case))
    np.testing.assert_array_equal(d[io3d.NATIVE_LABEL_KEY].numpy(), (label > 0).astype(np.int64))


def test_label_with_another_affine_is_used_voxelwise_with_a_warning(tmp_path):
    image, label = make_volume()
    case = Case("c", save(tmp_path / "c.nii.gz", image, make_affine()),
                save(tmp_path / "l.nii.gz", label, make_affine(origin=(0.0, 0.0, 0.0))))  # fmt: skip
    with pytest.warns(UserWarning, match="different affines"):
        d = LoadVolumed(num_classes=3)(case_to_dict(case))
    np.testing.assert_allclose(np.asarray(d["label"].affine), np.asarray(d["image"].affine))


@pytest.mark.parametrize("target", [SPACING, (0.75, 0.5, 1.25)])
def test_round_trip_to_original_geometry_is_exact_for_labels(tmp_path, target):
    image, label = make_volume()
    case = _case(tmp_path, image, label)
    out = preprocess_transforms(target, ["MRI-A", "MRI-B"], num_classes=3, keep_native=True)(case_to_dict(case))
    back = to_original_geometry(out["label"], out["meta"])
    assert back.shape == label.shape and back.dtype == np.int64
    np.testing.assert_array_equal(back, label)
    np.testing.assert_array_equal(out["label_native"].numpy(), label)
    # probability maps (channel axis, float) use linear interpolation; their argmax gives the label back
    probs = torch.nn.functional.one_hot(out["label"], 3).permute(3, 0, 1, 2).float()
    back_probs = to_original_geometry(probs, out["meta"])
    assert back_probs.shape == (3, *label.shape) and back_probs.dtype == np.float32
    np.testing.assert_array_equal(back_probs.argmax(0), label)
    # the same geometry given as a MONAI meta dict
    monai_meta = {"affine": out["meta"]["affine_preprocessed"], "original_affine": out["meta"]["affine"],
                  "spatial_shape": np.array(label.shape)}  # fmt: skip
    np.testing.assert_array_equal(to_original_geometry(out["label"], monai_meta), label)


def test_written_prediction_has_the_input_grid(tmp_path):
    image, label = make_volume()
    case = _case(tmp_path, image, label)
    out = preprocess_transforms((1.0, 1.0, 1.0), ["MRI-A", "MRI-B"], num_classes=3)(case_to_dict(case))
    pred = to_original_geometry(out["label"], out["meta"])
    path = write_nifti(pred, out["meta"]["affine"], tmp_path / "pred" / "c0.nii.gz")
    written, source = nib.load(str(path)), nib.load(str(case.image))
    assert written.shape == source.shape[:3]
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_to_original_geometry_errors():
    meta = {"affine": np.eye(4), "shape": (4, 4, 4), "affine_preprocessed": np.eye(4)}
    with pytest.raises(ConfigError, match=r"\[D, H, W\] or \[C, D, H, W\]"):
        to_original_geometry(np.zeros((4, 4)), meta)
    with pytest.raises(ConfigError, match="expected a dragsaw item meta"):
        to_original_geometry(np.zeros((4, 4, 4)), {"affine": np.eye(4)})
    with pytest.raises(ConfigError, match="needs meta"):
        to_original_geometry(np.zeros((4, 4, 4)))
    with pytest.raises(ConfigError, match="mode must be"):
        to_original_geometry(np.zeros((4, 4, 4)), meta, mode="cubic")


def test_write_nifti_round_trip_and_dtypes(tmp_path):
    affine = make_affine()
    _, label = make_volume()
    path = write_nifti(label.astype(np.int64), affine, tmp_path / "a" / "label.nii.gz")
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), label)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    big = label.astype(np.int64) * 300
    assert nib.load(str(write_nifti(big, affine, tmp_path / "big.nii"))).get_data_dtype() == np.int16
    maps = np.random.default_rng(0).random((3, 24, 20, 16)).astype(np.float64)
    img = nib.load(str(write_nifti(torch.from_numpy(maps), affine, tmp_path / "maps.nii.gz")))
    assert img.shape == (24, 20, 16, 3) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.moveaxis(np.asarray(img.dataobj), -1, 0), maps, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "big.nii", "maps.nii.gz"]  # no temporary files


def test_write_nifti_is_atomic(tmp_path, monkeypatch):
    path = write_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), tmp_path / "p.nii.gz")
    before = path.read_bytes()

    def fail(img, filename):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io3d.nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.nii.gz"]


@pytest.mark.parametrize(
    ("array", "affine", "name", "pattern"),
    [
        (np.zeros((4, 4, 4)), np.eye(4), "p.png", "must end in .nii.gz or .nii"),
        (np.zeros((4, 4)), np.eye(4), "p.nii.gz", r"array \[X, Y, Z\]"),
        (np.zeros((4, 4, 4)), np.eye(3), "p.nii.gz", "4x4 affine"),
        (np.full((4, 4, 4), np.nan), np.eye(4), "p.nii.gz", "NaN or Inf"),
    ],
)
def test_write_nifti_errors(tmp_path, array, affine, name, pattern):
    with pytest.raises(ConfigError, match=pattern):
        write_nifti(array, affine, tmp_path / name)
