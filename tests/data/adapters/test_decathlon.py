from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from .._volumes3d import SPACING, make_affine, make_volume, save, write_task

from dragsaw.data import DATASETS, find_cases, register_dataset
from dragsaw.data.adapters.decathlon import dataset_properties, decathlon
from dragsaw.errors import ConfigError, DataError


def test_msd_layout_cases_and_metadata(tmp_path):
    root = write_task(tmp_path / "Task", n_train=3, n_test=2)
    found = decathlon(root)
    assert sorted(found) == ["test", "train"]
    assert [c.case_id for c in found["train"]] == ["case_000", "case_001", "case_002"]
    assert [c.case_id for c in found["test"]] == ["case_100", "case_101"]
    case = found["train"][1]
    assert case.image == root / "imagesTr" / "case_001.nii.gz"
    assert case.mask == root / "labelsTr" / "case_001.nii.gz"
    assert case.extra["modalities"] == ("MRI-A", "MRI-B")
    assert case.extra["labels"] == ("background", "outer", "core")
    assert case.extra["layout"] == "msd" and "channels" not in case.extra
    assert found["test"][0].mask == root / "labelsTs" / "case_100.nii.gz"


def test_nnunet_layout_channel_files(tmp_path):
    root = write_task(tmp_path / "Task", n_train=2, n_test=1, layout="nnunet", modalities=("T1", "T2", "FLAIR"))
    found = decathlon(root)
    case = found["train"][0]
    expected = tuple(root / "imagesTr" / f"case_000_{c:04d}.nii.gz" for c in range(3))
    assert case.extra["channels"] == expected
    assert case.image == expected[0] and case.extra["layout"] == "nnunet"
    assert case.extra["modalities"] == ("T1", "T2", "FLAIR")
    assert found["test"][0].extra["channels"][2].name == "case_100_0002.nii.gz"


def test_nnunet_v2_without_training_list(tmp_path):
    root = write_task(tmp_path / "Task", n_train=2, layout="nnunet")
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = meta.pop("modality")
    meta["labels"] = {"background": 0, "outer": 1, "core": 2}
    del meta["training"], meta["test"]
    meta["file_ending"] = ".nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    found = decathlon(root)
    assert [c.case_id for c in found["train"]] == ["case_000", "case_001"]
    assert found["train"][0].extra["labels"] == ("background", "outer", "core")


def test_macos_resource_forks_are_ignored(tmp_path):
    root = write_task(tmp_path / "Task", n_train=2)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [c.case_id for c in decathlon(root)["train"]] == ["case_000", "case_001"]


def test_unlabeled_test_images_are_left_out_with_a_warning(tmp_path):
    root = write_task(tmp_path / "Task", n_train=2, n_test=2, test_labels=False)
    with pytest.warns(UserWarning, match="2 test image.*no labels.*left out"):
        found = decathlon(root)
    assert list(found) == ["train"]


def _break(root, what):
    """Apply one defect to a valid task folder; return a regex the error message must match."""
    if what == "no_json":
        (root / "dataset.json").unlink()
        return r"dataset\.json does not exist"
    if what == "no_labels_dir":
        for p in (root / "labelsTr").iterdir():
            p.unlink()
        (root / "labelsTr").rmdir()
        return r"labelsTr does not exist"
    if what == "missing_image":
        (root / "imagesTr" / "case_001.nii.gz").unlink()
        return r"case 'case_001' is listed in dataset\.json but neither .*case_001\.nii\.gz"
    if what == "missing_label":
        (root / "labelsTr" / "case_002.nii.gz").unlink()
        return r"case 'case_002': its label .*case_002\.nii\.gz does not exist"
    if what == "orphan_label":
        image, label = make_volume()
        save(root / "labelsTr" / "stray.nii.gz", label, make_affine())
        return r"labelsTr holds 1 label file\(s\) that no case .* uses: stray\.nii\.gz"
    if what == "orphan_image":
        image, label = make_volume()
        save(root / "imagesTr" / "extra.nii.gz", image, make_affine())
        return r"imagesTr holds 1 image file\(s\) .*extra\.nii\.gz"
    if what == "channel_count":
        image, _ = make_volume(channels=3)
        save(root / "imagesTr" / "case_001.nii.gz", image, make_affine())
        return r"case 'case_001'.* has 3 channel\(s\) but the dataset declares 2 modalities"
    if what == "label_shape":
        _, label = make_volume(shape=(24, 20, 15))
        save(root / "labelsTr" / "case_000.nii.gz", label, make_affine())
        return r"label .*case_000\.nii\.gz has shape \(24, 20, 15\) but its image .* \(24, 20, 16\)"
    if what == "bad_labels":
        meta = json.loads((root / "dataset.json").read_text())
        meta["labels"] = {"0": "background", "2": "core"}
        (root / "dataset.json").write_text(json.dumps(meta))
        return r"'labels' must map the indices 0\.\.n-1"
    if what == "duplicate":
        meta = json.loads((root / "dataset.json").read_text())
        meta["training"].append(meta["training"][0])
        (root / "dataset.json").write_text(json.dumps(meta))
        return r"case 'case_000' is listed twice"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    ["no_json", "no_labels_dir", "missing_image", "missing_label", "orphan_label", "orphan_image", "channel_count",
     "label_shape", "bad_labels", "duplicate"],
)  # fmt: skip
def test_layout_errors_name_the_problem(tmp_path, what):
    root = write_task(tmp_path / "Task", n_train=3)
    pattern = _break(root, what)
    with pytest.raises(DataError, match=pattern):
        decathlon(root)


@pytest.mark.parametrize("missing", [1, None])
def test_nnunet_inconsistent_channel_files(tmp_path, missing):
    root = write_task(tmp_path / "Task", n_train=2, layout="nnunet")
    if missing is None:  # an extra channel file beyond the declared modalities
        image, _ = make_volume(channels=1)
        save(root / "imagesTr" / "case_001_0002.nii.gz", image[..., 0], make_affine())
    else:
        (root / "imagesTr" / f"case_001_{missing:04d}.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case 'case_001' has channel files .* declares 2 modalities"):
        decathlon(root)


def test_register_and_find_cases(tmp_path):
    assert DATASETS["decathlon"] is decathlon
    register_dataset("decathlon")(decathlon)  # registering the same adapter again is harmless
    with pytest.raises(ConfigError, match="'decathlon' is already registered to .*decathlon"):
        register_dataset("decathlon")(lambda root: {})
    assert DATASETS["decathlon"] is decathlon
    root = write_task(tmp_path / "Task", n_train=2)
    assert [c.case_id for c in find_cases("decathlon", root)["train"]] == ["case_000", "case_001"]
    with pytest.raises(ConfigError, match="unknown dataset 'decathlom'.*Did you mean 'decathlon'"):
        find_cases("decathlom", root)


def test_dataset_properties_against_headers(tmp_path):
    root = write_task(tmp_path / "Task", n_train=2)
    # A third case stored with its axes permuted (file axes = z, x, y): RAS order must undo the permutation.
    perm = np.zeros((4, 4))
    perm[0, 1], perm[1, 2], perm[2, 0], perm[3, 3] = SPACING[0], SPACING[1], 3.0, 1.0
    image, label = make_volume(shape=(12, 24, 20))
    save(root / "imagesTr" / "case_009.nii.gz", image, perm)
    save(root / "labelsTr" / "case_009.nii.gz", label, perm)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/case_009.nii.gz", "label": "./labelsTr/case_009.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))

    cases = decathlon(root)["train"]
    props = dataset_properties(cases)
    for case in cases:
        zooms = [float(z) for z in nib.load(str(case.image)).header.get_zooms()[:3]]
        entry = props["cases"][case.case_id]
        np.testing.assert_allclose(entry["spacing_file"], zooms, rtol=1e-6)
        assert entry["shape_file"] == list(nib.load(str(case.image)).shape[:3])
    np.testing.assert_allclose(props["cases"]["case_000"]["spacing"], SPACING, rtol=1e-6)
    np.testing.assert_allclose(props["cases"]["case_009"]["spacing"], [1.5, 1.0, 3.0], rtol=1e-6)
    assert props["cases"]["case_009"]["shape"] == [24, 20, 12]
    np.testing.assert_allclose(props["median_spacing"], [1.5, 1.0, 2.5], rtol=1e-6)
    np.testing.assert_allclose(props["target_spacing"], [1.5, 1.0, 2.5], rtol=1e-6)  # ratio 2.5 < 3: median
    assert props["anisotropic_axis"] is None
    assert props["modalities"] == ["MRI-A", "MRI-B"]
    json.dumps(props)  # JSON-serialisable


def _header_only_cases(tmp_path, z_spacings):
    root = tmp_path / "aniso"
    meta = {"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "fg"}, "training": []}
    for i, z in enumerate(z_spacings):
        affine = np.diag([0.8, 0.8, z, 1.0])
        save(root / "imagesTr" / f"a{i}.nii.gz", np.zeros((4, 4, 3), np.int16), affine)
        save(root / "labelsTr" / f"a{i}.nii.gz", np.zeros((4, 4, 3), np.uint8), affine)
        meta["training"].append({"image": f"./imagesTr/a{i}.nii.gz", "label": f"./labelsTr/a{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    return decathlon(root)["train"]


def test_target_spacing_rule_for_anisotropic_data(tmp_path):
    z = [3.0, 5.0, 5.0, 5.0, 6.0, 5.0, 4.0]
    props = dataset_properties(_header_only_cases(tmp_path, z))
    assert props["anisotropic_axis"] == 2
    np.testing.assert_allclose(props["median_spacing"], [0.8, 0.8, 5.0], rtol=1e-6)
    np.testing.assert_allclose(props["target_spacing"], [0.8, 0.8, np.percentile(z, 10)], rtol=1e-6)
    assert props["target_spacing"][2] < 5.0


def test_target_spacing_never_finer_than_the_other_axes(tmp_path):
    props = dataset_properties(_header_only_cases(tmp_path, [0.5, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0]))
    assert np.percentile([0.5, 0.5, 4, 4, 4, 4, 4], 10) < 0.8
    np.testing.assert_allclose(props["target_spacing"], [0.8, 0.8, 0.8], rtol=1e-6)


def test_dataset_properties_rejects_empty_and_mixed_modalities(tmp_path):
    with pytest.raises(ConfigError, match="at least one case"):
        dataset_properties([])
    cases = decathlon(write_task(tmp_path / "A", n_train=1))["train"]
    cases += decathlon(write_task(tmp_path / "B", n_train=1, modalities=("CT", "PET")))["train"]
    with pytest.raises(DataError, match="different modality lists"):
        dataset_properties(cases)
