from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from ._volumes3d import make_affine, make_volume, save, write_task
from torch.utils.data import DataLoader

from dragsaw.data.cases import Case
from dragsaw.data.dataset import SegmentationDataset, collate_eval
from dragsaw.data.readers import VolumeReader
from dragsaw.data.adapters.decathlon import decathlon
from dragsaw.data.io.volumes import to_original_geometry
from dragsaw.errors import ConfigError, DataError

COMMON = dict(num_classes=3, target_spacing=(1.5, 1.0, 2.5), modalities=None, patch_size=(12, 12, 8))


@pytest.fixture
def cases(tmp_path):
    return decathlon(write_task(tmp_path / "T", n_train=3))["train"]


def test_training_items(cases):
    ds = SegmentationDataset(cases, VolumeReader(**COMMON), train=True, seed=0)
    assert len(ds) == 3 and ds.channels == 2 and ds.reader.modalities == ("MRI-A", "MRI-B")
    item = ds[1]
    assert set(item) == {"image", "label", "case_id"} and item["case_id"] == "case_001"
    assert item["image"].shape == (2, 12, 12, 8) and item["image"].dtype == torch.float32
    assert item["label"].shape == (12, 12, 8) and item["label"].dtype == torch.int64
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (2, 2, 12, 12, 8) and batch["label"].shape == (2, 12, 12, 8)


def test_evaluation_items_keep_the_original_geometry(cases):
    ds = SegmentationDataset(cases, VolumeReader(**COMMON), train=False)
    item = ds[0]
    src = nib.load(str(cases[0].image))
    assert item["image"].shape[0] == 2 and item["image"].shape[1:] == item["label"].shape
    np.testing.assert_array_equal(item["label_native"].numpy(), np.asarray(nib.load(str(cases[0].mask)).dataobj))
    assert item["label_native"].dtype == torch.int64
    np.testing.assert_allclose(item["meta"]["affine"], src.affine, atol=1e-5)
    assert item["meta"]["shape"] == src.shape[:3] and item["meta"]["path"] == str(cases[0].image)
    # the preprocessed label maps back onto the native one exactly (same spacing, RAS reorientation only)
    np.testing.assert_array_equal(to_original_geometry(item["label"], item["meta"]), item["label_native"].numpy())
    item["meta"]["affine"][0, 0] = 99.0  # callers cannot corrupt the cache
    assert ds[0]["meta"]["affine"][0, 0] != 99.0


def test_cache_returns_the_same_volume_and_matches_uncached(cases):
    cached = SegmentationDataset(cases, VolumeReader(**COMMON), train=False, cache=True)
    plain = SegmentationDataset(cases, VolumeReader(**COMMON), train=False, cache=False)
    a, b, c = cached[2], cached[2], plain[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], c["label"])
    torch.testing.assert_close(a["image"], c["image"], rtol=2**-10, atol=1e-3)  # float16 cache


def test_reseed_repeats_the_same_patches(cases):
    ds = SegmentationDataset(cases, VolumeReader(**COMMON), train=True)
    ds.reseed(5)
    first = [ds[i]["image"] for i in range(3)]
    ds.reseed(5)
    assert all(torch.equal(x, ds[i]["image"]) for i, x in enumerate(first))


def test_negative_case_without_mask_is_background(tmp_path):
    image, _ = make_volume()
    case = Case("neg", save(tmp_path / "neg.nii.gz", image, make_affine()), None)
    item = SegmentationDataset([case], VolumeReader(**{**COMMON, "modalities": ["MRI", "MRI"]}), train=False)[0]
    assert not item["label"].any() and item["label_native"].shape == (24, 20, 16) and not item["label_native"].any()


def test_construction_errors(cases, tmp_path):
    with pytest.raises(ConfigError, match="num_classes=2 but case 'case_000' declares 3 labels"):
        SegmentationDataset(cases, VolumeReader(**{**COMMON, "num_classes": 2}), train=True)
    with pytest.raises(DataError, match="has 2 channel\\(s\\) but the dataset declares 3 modalities"):
        SegmentationDataset(cases, VolumeReader(**{**COMMON, "modalities": ["A", "B", "C"]}), train=True)
    with pytest.raises(ConfigError, match="non-empty sequence of Case"):
        SegmentationDataset([], VolumeReader(**COMMON), train=True)
    with pytest.raises(ConfigError, match="patch_size must be 3"):
        SegmentationDataset(cases, VolumeReader(**{**COMMON, "patch_size": (12, 12)}), train=True)
    bare = [Case(c.case_id, c.image, c.mask) for c in cases]
    with pytest.raises(ConfigError, match="modalities=None needs every case"):
        SegmentationDataset(bare, VolumeReader(**COMMON), train=True)


def test_bad_label_value_is_reported_on_access(tmp_path):
    image, label = make_volume()
    label[1, 1, 1] = 7
    case = Case("bad", save(tmp_path / "bad.nii.gz", image, make_affine()),
                save(tmp_path / "bad_label.nii.gz", label, make_affine()))  # fmt: skip
    ds = SegmentationDataset([case], VolumeReader(**{**COMMON, "modalities": ["MRI", "MRI"]}), train=True)
    with pytest.raises(DataError, match=r"bad_label\.nii\.gz has values \{7\}"):
        ds[0]


def test_collate_eval(cases):
    ds = SegmentationDataset(cases, VolumeReader(**COMMON), train=False)
    batch = collate_eval([ds[0], ds[1]])
    assert batch["image"].shape == (2, *ds[0]["image"].shape) and batch["case_id"] == ["case_000", "case_001"]
    assert len(batch["label_native"]) == 2 and len(batch["meta"]) == 2
    loader = DataLoader(ds, batch_size=1, collate_fn=collate_eval)
    assert [b["case_id"][0] for b in loader] == ["case_000", "case_001", "case_002"]
    with pytest.raises(ConfigError, match="empty batch"):
        collate_eval([])
    other = dict(ds[0], image=torch.zeros(2, 4, 4, 4))
    with pytest.raises(ConfigError, match="batch_size=1"):
        collate_eval([ds[0], other])
