from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dragsaw.data.adapters.decathlon import dataset_properties, decathlon
from dragsaw.data.synthetic.volumes import generate3d, write_decathlon
from dragsaw.errors import ConfigError, DataError

SMALL = dict(shape=(24, 20, 16), spacing=(1.0, 1.0, 2.5))


def test_deterministic_per_seed_and_prefix_stable():
    a = generate3d(3, seed=4, **SMALL)
    b = generate3d(3, seed=4, **SMALL)
    for (ia, la, fa), (ib, lb, fb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(la, lb) and np.array_equal(fa, fb)
    first = generate3d(1, seed=4, **SMALL)[0]
    assert np.array_equal(first[0], a[0][0]) and np.array_equal(first[1], a[0][1])
    other = generate3d(1, seed=5, **SMALL)[0]
    assert not np.array_equal(other[0], a[0][0])


def test_volume_content_and_geometry():
    for image, label, affine in generate3d(4, seed=0):
        assert image.shape == (2, 48, 48, 32) and image.dtype == np.int16
        assert label.shape == (48, 48, 32) and set(np.unique(label)) == {0, 1, 2}
        body = image[0] > 0
        assert np.array_equal(body, image[1] > 0)  # the same body in both modalities, exactly 0 outside
        assert 0.2 < body.mean() < 0.8 and body[label > 0].all()
        # the core is inside the lesion: every core voxel's 6 neighbours are lesion voxels (or the core)
        core = np.argwhere(label == 2)
        for axis in range(3):
            for step in (-1, 1):
                n = core.copy()
                n[:, axis] += step
                assert (label[tuple(n.T)] > 0).all()
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (1.0, 1.0, 2.5), rtol=1e-9)
        assert not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))  # rotated
        assert np.linalg.norm(affine[:3, 3]) > 0


def test_modalities_have_different_contrasts_and_a_threshold_does_not_segment():
    outer_a, outer_b, core_b = [], [], []
    for image, label, _ in generate3d(6, seed=1):  # the default size: tiny volumes are mostly lesion border
        body = image[0] > 0
        bg = [image[m][body & (label == 0)].mean() for m in range(2)]
        outer_a.append(image[0][label == 1].mean() - bg[0])
        outer_b.append(image[1][label == 1].mean() - bg[1])
        core_b.append(image[1][label == 2].mean() - bg[1])
        # best Dice of any intensity threshold of modality A for the lesion (classes 1 + 2) stays well below 1
        fg = label > 0
        values = image[0][body]
        best = max(
            2 * (fg & (image[0] >= t)).sum() / (fg.sum() + (body & (image[0] >= t)).sum())
            for t in np.percentile(values, np.arange(50, 100, 1.0))
        )
        assert best < 0.9
    assert np.mean(outer_a) > 2 * abs(np.mean(outer_b))  # the outer region shows in A, hardly in B
    assert np.mean(core_b) > 2 * abs(np.mean(outer_b))  # the core shows in B


def test_write_decathlon_is_read_back(tmp_path):
    root = write_decathlon(tmp_path / "synth", n_train=3, n_test=2, seed=2, **SMALL)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI-A", "1": "MRI-B"}
    assert meta["labels"] == {"0": "background", "1": "outer", "2": "core"}
    found = decathlon(root)
    assert [c.case_id for c in found["train"]] == ["synth_tr_000", "synth_tr_001", "synth_tr_002"]
    assert [c.case_id for c in found["test"]] == ["synth_ts_000", "synth_ts_001"]
    expected = generate3d(3, seed=2, **SMALL)
    for case, (image, label, affine) in zip(found["train"], expected):
        img = nib.load(str(case.image))
        assert img.shape == (24, 20, 16, 2)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(img.dataobj), -1, 0), image)
        np.testing.assert_array_equal(np.asarray(nib.load(str(case.mask)).dataobj), label)
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    props = dataset_properties(found["train"])
    np.testing.assert_allclose(props["target_spacing"], (1.0, 1.0, 2.5), rtol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folder left


def test_single_modality_writes_3d_images(tmp_path):
    root = write_decathlon(tmp_path / "one", n_train=1, n_test=0, modalities=1, num_classes=2, **SMALL)
    case = decathlon(root)["train"][0]
    assert nib.load(str(case.image)).shape == (24, 20, 16) and case.extra["modalities"] == ("MRI-A",)
    assert set(np.unique(np.asarray(nib.load(str(case.mask)).dataobj))) == {0, 1}


def test_refuses_a_non_empty_target_and_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="non-empty folder; refusing to overwrite"):
        write_decathlon(tmp_path / "full", n_train=1, **SMALL)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    write_decathlon(tmp_path / "empty_ok", n_train=1, n_test=0, **SMALL)
    for kwargs, pattern in [
        ({"n": -1}, "n must be a non-negative integer"),
        ({"n": 1, "shape": (8, 20, 16)}, "shape must be three integers"),
        ({"n": 1, "spacing": (1.0, -1.0, 2.0)}, "spacing must be 3 positive numbers"),
        ({"n": 1, "num_classes": 9}, "num_classes must be an integer in 2..6"),
        ({"n": 1, "modalities": 0}, "modalities must be an integer in 1..4"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            generate3d(**{**SMALL, **kwargs})
