from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from dragsaw.data.adapters import images as d2
from dragsaw.data.adapters import DATASETS, find_cases
from dragsaw.data.io.images import read_case
from dragsaw.errors import ConfigError, DataError


def ids(cases):
    return [c.case_id for c in cases]


# ---------------------------------------------------------------- ISIC


def make_isic2016(root: Path, files, train=("ISIC_0000001", "ISIC_0000000", "ISIC_0000002"), test=("ISIC_0000009",)):
    for part, names in (("Training", train), ("Test", test)):
        for i, name in enumerate(names):
            files.save(root / f"ISBI2016_ISIC_Part1_{part}_Data" / f"{name}.jpg", files.rgb(8, 10, i))
            files.save(root / f"ISBI2016_ISIC_Part1_{part}_GroundTruth" / f"{name}_Segmentation.png", files.mask())
    return root


def test_isic2016_official_layout(tmp_path, files):
    root = make_isic2016(tmp_path, files)
    out = d2.isic2016(root)
    assert set(out) == {"train", "test"}
    assert ids(out["train"]) == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert ids(out["test"]) == ["ISIC_0000009"]
    case = out["train"][1]
    assert case.image == root / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000001.jpg"
    assert case.mask == root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000001_Segmentation.png"
    assert find_cases("isic2016", root) == out


def test_isic2016_missing_mask_orphan_mask_and_missing_folder(tmp_path, files):
    root = make_isic2016(tmp_path / "a", files)
    gone = root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000002_Segmentation.png"
    gone.unlink()
    with pytest.raises(DataError, match="without a mask") as info:
        d2.isic2016(root)
    assert str(gone) in str(info.value)

    root = make_isic2016(tmp_path / "b", files)
    files.save(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000077_Segmentation.png", files.mask())
    with pytest.raises(DataError, match="ISIC_0000077_Segmentation.png"):
        d2.isic2016(root)

    root = tmp_path / "c"
    make_isic2016(root, files)
    for p in (root / "ISBI2016_ISIC_Part1_Test_Data").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="holds no image files") as info:
        d2.isic2016(root)
    assert "ISBI2016_ISIC_Part1_Test_Data" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        d2.isic2016(tmp_path / "nowhere")


def test_isic2017_three_splits_skip_superpixels(tmp_path, files):
    for part, split_ids in (("Training", ["ISIC_0000000", "ISIC_0000001"]), ("Validation", ["ISIC_0000010"]),
                            ("Test_v2", ["ISIC_0000020", "ISIC_0000021"])):  # fmt: skip
        for name in split_ids:
            files.save(tmp_path / f"ISIC-2017_{part}_Data" / f"{name}.jpg", files.rgb())
            files.save(tmp_path / f"ISIC-2017_{part}_Data" / f"{name}_superpixels.png", files.rgb())
            files.save(tmp_path / f"ISIC-2017_{part}_Part1_GroundTruth" / f"{name}_segmentation.png", files.mask())
        (tmp_path / f"ISIC-2017_{part}_Data" / f"ISIC-2017_{part}_Data_metadata.csv").write_text("id,age\n")
    out = d2.isic2017(tmp_path)
    assert {k: ids(v) for k, v in out.items()} == {
        "train": ["ISIC_0000000", "ISIC_0000001"],
        "val": ["ISIC_0000010"],
        "test": ["ISIC_0000020", "ISIC_0000021"],
    }
    assert out["val"][0].mask.name == "ISIC_0000010_segmentation.png"


# ---------------------------------------------------------------- PH2


def make_ph2(root: Path, files, names=("IMD002", "IMD003", "IMD004")):
    base = root / "PH2 Dataset images"
    for i, name in enumerate(names):
        files.save(base / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp", files.rgb(6, 8, i))
        files.save(base / name / f"{name}_lesion" / f"{name}_lesion.bmp", files.mask(6, 8))
        (base / name / f"{name}_roi").mkdir()
    return root


def test_ph2_official_layout_and_inner_root(tmp_path, files):
    root = make_ph2(tmp_path, files)
    out = d2.ph2(root)
    assert list(out) == ["all"] and ids(out["all"]) == ["IMD002", "IMD003", "IMD004"]
    assert out["all"][0].mask.name == "IMD002_lesion.bmp"
    assert d2.ph2(root / "PH2 Dataset images") == out
    image, mask = read_case(out["all"][0])
    assert image.shape == (3, 6, 8) and set(np.unique(mask)) == {0, 1}
    (root / "PH2 Dataset images" / "IMD003" / "IMD003_lesion" / "IMD003_lesion.bmp").unlink()
    with pytest.raises(DataError, match="IMD003_lesion.bmp"):
        d2.ph2(root)
    with pytest.raises(DataError, match="no IMDxxx"):
        d2.ph2(tmp_path / "PH2 Dataset images" / "IMD002")


def test_isic2016_ph2_cross_dataset(tmp_path, files):
    isic = make_isic2016(tmp_path / "isic", files)
    ph = make_ph2(tmp_path / "ph2", files)
    out = find_cases("isic2016_ph2", isic, ph2_root=ph)
    assert ids(out["train"]) == ids(d2.isic2016(isic)["train"])
    assert ids(out["test"]) == ["IMD002", "IMD003", "IMD004"] and "val" not in out


# ---------------------------------------------------------------- Montgomery


def test_montgomery_official_merges_left_and_right(tmp_path, files):
    base = tmp_path / "MontgomerySet"
    for i, name in enumerate(["MCUCXR_0001_0", "MCUCXR_0002_1"]):
        files.save(base / "CXR_png" / f"{name}.png", np.full((6, 8), 50 + i, np.uint8))
        left, right = np.zeros((6, 8), np.uint8), np.zeros((6, 8), np.uint8)
        left[1:5, 1:3], right[1:5, 5:7] = 255, 255
        files.save(base / "ManualMask" / "leftMask" / f"{name}.png", left)
        files.save(base / "ManualMask" / "rightMask" / f"{name}.png", right)
    (base / "ClinicalReadings").mkdir()
    out = d2.montgomery(tmp_path)
    assert ids(out["all"]) == ["MCUCXR_0001_0", "MCUCXR_0002_1"]
    case = out["all"][0]
    assert [p.parent.name for p in case.mask_files()] == ["leftMask", "rightMask"]
    _, mask = read_case(case)
    assert mask.sum() == 16 and mask[1:5, 1:3].all() and mask[1:5, 5:7].all()
    assert d2.montgomery(base) == out
    files.save(base / "ManualMask" / "rightMask" / "MCUCXR_0099_0.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match="MCUCXR_0099_0.png"):
        d2.montgomery(tmp_path)


def test_montgomery_generic_folder(tmp_path, files):
    for name in ["b", "a"]:
        files.save(tmp_path / "images" / f"{name}.png", np.zeros((4, 4), np.uint8))
        files.save(tmp_path / "masks" / f"{name}.png", files.mask(4, 4))
    (tmp_path / "SOURCE.txt").write_text("where from")
    out = d2.montgomery(tmp_path)
    assert ids(out["all"]) == ["a", "b"] and out["all"][0].extra["dataset"] == "montgomery"


# ---------------------------------------------------------------- DigestPath


def test_digestpath_positives_and_negatives(tmp_path, files):
    pos, neg = tmp_path / "tissue-train-pos-v1", tmp_path / "tissue-train-neg"
    files.save(pos / "p1.jpg", files.rgb())
    files.save(pos / "p1_mask.jpg", files.mask())
    files.save(pos / "p2.png", files.rgb())
    files.save(pos / "p2_mask.png", files.mask())
    files.save(neg / "n1.jpg", files.rgb())
    out = d2.digestpath(tmp_path)
    by_id = {c.case_id: c for c in out["all"]}
    assert sorted(by_id) == ["n1", "p1", "p2"]
    assert by_id["n1"].mask is None and by_id["n1"].is_negative
    assert by_id["p1"].mask == pos / "p1_mask.jpg"
    _, empty = read_case(by_id["n1"])
    assert not empty.any()
    with pytest.warns(UserWarning, match="lossy JPEG"):
        _, mask = read_case(by_id["p1"])
    assert set(np.unique(mask)) == {0, 1}
    files.save(pos / "p3_mask.png", files.mask())
    with pytest.raises(DataError, match="p3_mask.png"):
        d2.digestpath(tmp_path)


def test_digestpath_split_folders_and_no_masks(tmp_path, files):
    for split in ("train", "test"):
        files.save(tmp_path / split / f"{split}1.png", files.rgb())
        files.save(tmp_path / split / f"{split}1_mask.png", files.mask())
        files.save(tmp_path / split / f"{split}2.png", files.rgb())
    out = d2.digestpath(tmp_path)
    assert set(out) == {"train", "test"} and ids(out["test"]) == ["test1", "test2"]
    files.save(tmp_path / "other" / "x.png", files.rgb())
    with pytest.raises(DataError, match="no '<stem>_mask"):
        d2.digestpath(tmp_path / "other")


# ---------------------------------------------------------------- generic folder


def test_folder_suffixes_and_exact_stems(tmp_path, files):
    for name, mask in (("a", "a.png"), ("b", "b_mask.png"), ("c", "c_Segmentation.png"), ("d", "d_segmentation.bmp")):
        files.save(tmp_path / "images" / f"{name}.jpg", files.rgb())
        files.save(tmp_path / "masks" / mask, files.mask())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = d2.folder(tmp_path)
    assert {c.case_id: c.mask.name for c in out["all"]} == {
        "a": "a.png", "b": "b_mask.png", "c": "c_Segmentation.png", "d": "d_segmentation.bmp"
    }


def test_folder_letter_case_only_with_warning(tmp_path, files):
    files.save(tmp_path / "images" / "Case_01.png", files.rgb())
    files.save(tmp_path / "masks" / "case_01_MASK.png", files.mask())
    with pytest.warns(UserWarning, match="letter case"):
        out = d2.folder(tmp_path)
    assert out["all"][0].case_id == "Case_01" and out["all"][0].mask.name == "case_01_MASK.png"


def test_folder_orphans_listed_first_ten(tmp_path, files):
    for i in range(12):
        files.save(tmp_path / "images" / f"img{i:02d}.png", files.rgb())
    files.save(tmp_path / "masks" / "img00.png", files.mask())
    files.save(tmp_path / "masks" / "zzz.png", files.mask())
    with pytest.raises(DataError) as info:
        d2.folder(tmp_path)
    msg = str(info.value)
    assert "11 image(s) without a mask" in msg and "(11 in all)" in msg and "img10.png" in msg
    assert "img11.png" not in msg and "1 mask(s) without an image" in msg and "zzz.png" in msg and "fix:" in msg


def test_folder_split_subfolders(tmp_path, files):
    for split, names in (("train", ["t1", "t2"]), ("val", ["v1"]), ("test", ["s1"])):
        for name in names:
            files.save(tmp_path / split / "images" / f"{name}.png", files.rgb())
            files.save(tmp_path / split / "masks" / f"{name}.png", files.mask())
    out = d2.folder(tmp_path)
    assert {k: ids(v) for k, v in out.items()} == {"train": ["t1", "t2"], "val": ["v1"], "test": ["s1"]}
    files.save(tmp_path / "images" / "x.png", files.rgb())
    with pytest.raises(DataError, match="ambiguous"):
        d2.folder(tmp_path)


def test_folder_layout_errors(tmp_path, files):
    files.save(tmp_path / "a" / "test" / "images" / "x.png", files.rgb())
    with pytest.raises(DataError, match="no train/"):
        d2.folder(tmp_path / "a")
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "masks").mkdir()
    with pytest.raises(DataError, match="holds no image files") as info:
        d2.folder(tmp_path / "b")
    assert str(tmp_path / "b" / "images") in str(info.value)
    files.save(tmp_path / "c" / "images" / "x.png", files.rgb())
    with pytest.raises(DataError, match="masks"):
        d2.folder(tmp_path / "c")
    files.save(tmp_path / "d" / "images" / "x.png", files.rgb())
    files.save(tmp_path / "d" / "images" / "x.jpg", files.rgb())
    files.save(tmp_path / "d" / "masks" / "x.png", files.mask())
    with pytest.raises(DataError, match="share the stem"):
        d2.folder(tmp_path / "d")
    files.save(tmp_path / "e" / "images" / "x.png", files.rgb())
    files.save(tmp_path / "e" / "masks" / "x.png", files.mask())
    files.save(tmp_path / "e" / "masks" / "x_mask.png", files.mask())
    with pytest.raises(DataError, match="two masks"):
        d2.folder(tmp_path / "e")


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors(tmp_path):
    assert set(DATASETS) == {"isic2016", "isic2017", "ph2", "isic2016_ph2", "montgomery", "digestpath", "folder",
                             "decathlon"}  # decathlon is registered by dragsaw.data
    with pytest.raises(ConfigError, match="Did you mean 'isic2016'") as info:
        find_cases("isic216", tmp_path)
    assert "folder" in str(info.value) and "montgomery" in str(info.value)
    with pytest.raises(ConfigError, match="colour"):
        find_cases("folder", tmp_path, colour=True)
    with pytest.raises(ConfigError, match="ph2_root"):
        find_cases("isic2016_ph2", tmp_path)
