from __future__ import annotations

import numpy as np
import pytest
import torch

from dragsaw.data.cases import Case
from dragsaw.data.dataset import SegmentationDataset, collate_eval, worker_init_fn
from dragsaw.data.readers import ImageReader
from dragsaw.data.io.images import read_mask
from dragsaw.errors import ConfigError, DataError


@pytest.fixture
def cases(tmp_path, files):
    out = []
    for i, (h, w) in enumerate([(12, 16), (20, 10), (8, 8)]):
        img = files.save(tmp_path / f"c{i}.png", files.rgb(h, w, i))
        mask = files.save(tmp_path / f"c{i}_mask.png", files.mask(h, w))
        out.append(Case(f"c{i}", img, mask))
    return out


def test_eval_items_and_native_labels(cases):
    ds = SegmentationDataset(cases, ImageReader((8, 12)), train=False)
    assert len(ds) == 3 and ds.channels == 3
    item = ds[1]
    assert item["case_id"] == "c1"
    assert item["image"].shape == (3, 8, 12) and item["image"].dtype == torch.float32
    assert item["label"].shape == (8, 12) and item["label"].dtype == torch.int64
    assert item["meta"] == {"shape": (20, 10), "path": str(cases[1].image)}
    np.testing.assert_array_equal(item["label_native"].numpy(), read_mask(cases[1].mask))
    assert set(item["label"].unique().tolist()) == {0, 1}
    batch = collate_eval([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 8, 12) and batch["label"].shape == (3, 8, 12)
    assert [t.shape for t in batch["label_native"]] == [(12, 16), (20, 10), (8, 8)]
    assert batch["case_id"] == ["c0", "c1", "c2"] and batch["meta"][2]["shape"] == (8, 8)
    assert ds[-1]["case_id"] == "c2"
    with pytest.raises(IndexError):
        ds[3]


def test_train_items_are_seeded_and_have_no_native_label(cases):
    a = SegmentationDataset(cases, ImageReader((8, 8)), train=True, seed=5)
    b = SegmentationDataset(cases, ImageReader((8, 8)), train=True, seed=5)
    ia, ib = a[0], b[0]
    assert "label_native" not in ia and torch.equal(ia["image"], ib["image"]) and torch.equal(ia["label"], ib["label"])
    assert set(ia["label"].unique().tolist()) <= {0, 1}


def test_cache_keeps_arrays_and_matches_uncached(cases):
    cached = SegmentationDataset(cases, ImageReader((8, 12)), train=False, cache=True)
    plain = SegmentationDataset(cases, ImageReader((8, 12)), train=False, cache=False)
    first = cached[0]
    cases[0].image.unlink()  # served from memory from now on
    again = cached[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label_native"], again["label_native"])
    with pytest.raises(DataError, match="c0.png"):
        plain[0]
    ref = SegmentationDataset(cases[1:], ImageReader((8, 12)), train=False, cache=False)[0]
    got = cached[1]
    torch.testing.assert_close(got["image"], ref["image"], atol=5e-3, rtol=0)  # float16 cache
    assert torch.equal(got["label"], ref["label"]) and torch.equal(got["label_native"], ref["label_native"])


def test_channel_mismatch_names_the_odd_file(tmp_path, files, cases):
    gray = files.save(tmp_path / "gray.png", np.zeros((8, 8), np.uint8))
    odd = Case("g", gray, cases[0].mask)
    with pytest.raises(DataError, match="gray.png") as info:
        SegmentationDataset([*cases, odd], ImageReader((8, 8)), train=False)
    assert "3-channel" in str(info.value)


def test_negative_case_has_empty_label(tmp_path, files):
    img = files.save(tmp_path / "n.png", files.rgb(6, 6))
    item = SegmentationDataset([Case("n", img, None)], ImageReader((4, 4)), train=False)[0]
    assert not item["label"].any() and item["label_native"].shape == (6, 6)


def test_value_map_multiclass(tmp_path, files):
    img = files.save(tmp_path / "a.png", files.rgb(4, 4))
    stored = np.array([[0, 0, 128, 128], [0, 0, 128, 128], [255, 255, 0, 0], [255, 255, 0, 0]], np.uint8)
    mask = files.save(tmp_path / "a_mask.png", stored)
    ds = SegmentationDataset([Case("a", img, mask)], ImageReader((4, 4), num_classes=3, value_map={0: 0, 128: 1, 255: 2}), train=False)  # fmt: skip
    np.testing.assert_array_equal(ds[0]["label"].numpy(), [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]])


@pytest.mark.parametrize("kwargs, match", [({"cases": []}, "non-empty sequence of Case"),
                                           ({"num_classes": 1}, "num_classes must be an integer >= 2"),
                                           ({"input_size": (0, 4)}, "input_size must be 2 positive integers")])
def test_bad_arguments(cases, kwargs, match):
    args = {"cases": cases, "input_size": (4, 4), **kwargs}
    with pytest.raises(ConfigError, match=match):
        SegmentationDataset(args.pop("cases"), ImageReader(**args), train=False)


def test_reader_must_be_a_case_reader(cases):
    with pytest.raises(ConfigError, match="reader must be an ImageReader or a VolumeReader, got tuple"):
        SegmentationDataset(cases, (8, 8), train=False)


def test_worker_init_fn_gives_workers_different_augmentations(cases):
    ds = SegmentationDataset([cases[0]] * 4, ImageReader((8, 8)), train=True, seed=0, cache=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=worker_init_fn,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    images = [b["image"][0] for b in loader]
    # Items 0 and 1 go to different workers, each on its first draw: without reseeding they would be equal.
    assert not torch.equal(images[0], images[1])
    again = [b["image"][0] for b in torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2,
             worker_init_fn=worker_init_fn, generator=torch.Generator().manual_seed(0))]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(images, again))
