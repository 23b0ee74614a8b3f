from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from .._volumes3d import make_affine, write_task

from dragsaw.data.statistics import ct_statistics
from dragsaw.data.adapters.decathlon import decathlon
from dragsaw.data.io.volumes import case_to_dict
from dragsaw.data.transforms.volumes import (
    NormalizeModalities,
    preprocess_transforms,
    train_transforms,
)
from dragsaw.errors import ConfigError


def _zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Reference: per channel z-score over the voxels where any channel is non-zero; 0 elsewhere."""
    region = (image != 0).any(axis=0)
    out = np.zeros_like(image, dtype=np.float64)
    for c in range(image.shape[0]):
        vals = image[c][region].astype(np.float64)
        out[c][region] = (vals - vals.mean()) / vals.std()
    return out


def test_preprocess_output_spacing_and_orientation(tmp_path):
    case = decathlon(write_task(tmp_path / "T", n_train=1))["train"][0]
    target = (1.0, 0.8, 2.0)
    out = preprocess_transforms(target, ["MRI-A", "MRI-B"], num_classes=3)(case_to_dict(case))
    aff = out["meta"]["affine_preprocessed"]
    assert nib.aff2axcodes(aff) == ("R", "A", "S")  # the stored affine is LPS-like: reoriented
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), target, rtol=1e-5)
    assert out["meta"]["shape_preprocessed"] == tuple(out["image"].shape[1:]) == tuple(out["label"].shape)
    extent = np.array([24, 20, 16]) * np.array([1.5, 1.0, 2.5])
    assert all(abs(s - e / t) <= 2 for s, e, t in zip(out["image"].shape[1:], extent, target))
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) == {0, 1, 2}


def test_mri_normalisation_matches_numpy_zscore_and_orientation(tmp_path):
    affine = make_affine(rot_deg=0.0)  # axis aligned, x and y flipped: RAS flips them back, no interpolation
    case = decathlon(write_task(tmp_path / "T", n_train=1, affine=affine))["train"][0]
    raw = np.moveaxis(np.asarray(nib.load(str(case.image)).dataobj, dtype=np.float64), -1, 0)
    out = preprocess_transforms((1.5, 1.0, 2.5), ["MRI-A", "MRI-B"])(case_to_dict(case))
    expected = np.flip(_zscore_nonzero(raw), axis=(1, 2))
    np.testing.assert_allclose(out["image"].numpy(), expected, atol=1e-4)
    assert (out["image"].numpy()[:, :2] == 0).all()  # outside the non-zero region stays 0


def test_normalize_modalities_against_numpy():
    rng = np.random.default_rng(0)
    image = rng.normal(3.0, 2.0, (3, 6, 5, 4)).astype(np.float32)
    image[:, :2] = 0.0
    image[1, 3, 0, 0] = 0.0  # a zero inside the region (another channel is non-zero there) stays in the region
    stats = {2: {"mean": 1.0, "std": 4.0, "percentile_00_5": -1.0, "percentile_99_5": 5.0}}
    out = NormalizeModalities(["MRI", "T2", "CT"], stats)({"image": torch.from_numpy(image)})["image"].numpy()
    ref = _zscore_nonzero(image[:2])
    np.testing.assert_allclose(out[:2], ref, atol=1e-5)
    np.testing.assert_allclose(out[2], (np.clip(image[2], -1.0, 5.0) - 1.0) / 4.0, atol=1e-6)


def test_ct_statistics_and_ct_normalisation_against_numpy(tmp_path):
    root = write_task(tmp_path / "CT", n_train=3, modalities=("CT",))
    cases = decathlon(root)["train"]
    pooled = []
    for case in cases:
        img = np.asarray(nib.load(str(case.image)).dataobj, dtype=np.float64)
        lab = np.asarray(nib.load(str(case.mask)).dataobj)
        pooled.append(img[lab > 0])
    pooled = np.concatenate(pooled)
    stats = ct_statistics(cases, samples_per_case=10**6)
    assert list(stats) == [0]
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    np.testing.assert_allclose([stats[0][k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")],
                               [pooled.mean(), pooled.std(), lo, hi], rtol=1e-6)  # fmt: skip
    json_stats = json.loads(json.dumps(stats))  # string keys after a JSON round trip are accepted
    out = preprocess_transforms((1.5, 1.0, 2.5), ["CT"], json_stats)(case_to_dict(cases[0]))
    raw = np.asarray(nib.load(str(cases[0].image)).dataobj, dtype=np.float64)
    expected = np.flip((np.clip(raw, lo, hi) - pooled.mean()) / pooled.std(), axis=(0, 1))
    # the affine has a 7 degree rotation: same spacing, so resampling lands on the voxel centres (up to rounding)
    np.testing.assert_allclose(out["image"].numpy()[0], expected, atol=1e-3)
    sub = ct_statistics(cases, samples_per_case=50, seed=1)  # subsampled: close, not equal
    assert sub[0]["mean"] != stats[0]["mean"] and abs(sub[0]["mean"] - stats[0]["mean"]) < 0.1 * stats[0]["std"]
    assert sub == ct_statistics(cases, samples_per_case=50, seed=1)


def test_ct_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="include CT channel.*ct_statistics"):
        preprocess_transforms((1, 1, 1), ["CT"])
    with pytest.raises(ConfigError, match=r"ct_stats\[0\] must hold"):
        preprocess_transforms((1, 1, 1), ["CT"], {0: {"mean": 0.0}})
    cases = decathlon(write_task(tmp_path / "T", n_train=1))["train"]
    with pytest.raises(ConfigError, match="no CT channel"):
        ct_statistics(cases)
    with pytest.raises(ConfigError, match="target_spacing must be 3 positive numbers"):
        preprocess_transforms((1.0, 0.0, 1.0), ["MRI"])
    with pytest.raises(ConfigError, match="modalities must be a non-empty list"):
        preprocess_transforms((1, 1, 1), "MRI")


def _volume(shape=(40, 40, 40), fg_at=(18, 18, 18), fg=3):
    image = torch.from_numpy(np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32))
    label = torch.zeros(shape, dtype=torch.int64)
    x, y, z = fg_at
    label[x : x + fg, y : y + fg, z : z + fg] = 1
    return {"image": image, "label": label}


@pytest.mark.parametrize(("pos_fraction", "low", "high"), [(1 / 3, 0.26, 0.43), (0.0, 0.0, 0.08), (1.0, 1.0, 1.0)])
def test_patches_contain_foreground_in_the_expected_share(pos_fraction, low, high):
    # 27 foreground voxels in 40^3: a patch centred on background contains some with probability ~ (10/40)^3
    data = _volume()
    t = train_transforms((8, 8, 8), pos_fraction=pos_fraction, seed=0)
    draws = [t(data) for _ in range(240)]
    assert all(d["image"].shape == (2, 8, 8, 8) and d["label"].shape == (8, 8, 8) for d in draws)
    share = np.mean([bool((d["label"] > 0).any()) for d in draws])
    assert low <= share <= high


def test_small_volumes_are_padded_and_types_are_plain():
    data = _volume(shape=(6, 20, 5), fg_at=(2, 8, 1), fg=2)
    out = train_transforms((16, 16, 8), seed=1)(data)
    assert out["image"].shape == (2, 16, 16, 8) and out["label"].shape == (16, 16, 8)
    assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) <= {0, 1}


def test_train_transforms_are_deterministic_given_a_seed():
    data = _volume(shape=(24, 24, 24), fg_at=(8, 8, 8), fg=6)

    def run(seed):
        t = train_transforms((12, 12, 12), seed=seed, affine_prob=1.0, noise_prob=1.0)
        return [t(data) for _ in range(4)]

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_without_augmentation_a_patch_is_an_exact_crop():
    data = _volume(shape=(20, 20, 20), fg_at=(5, 5, 5), fg=10)
    t = train_transforms((6, 6, 6), rotate_deg=0.0, scale=(1.0, 1.0), flip_prob=0.0, intensity_prob=0.0,
                         noise_prob=0.0, affine_prob=1.0, seed=0)  # fmt: skip
    image = data["image"].numpy()
    for _ in range(5):
        out = t(data)
        patch = out["image"].numpy()
        hits = [
            (x, y, z)
            for x in range(15) for y in range(15) for z in range(15)
            if np.allclose(image[:, x : x + 6, y : y + 6, z : z + 6], patch, atol=1e-5)
        ]  # fmt: skip
        assert len(hits) == 1  # the resampling grid lands on voxel centres: a plain crop, no interpolation
        x, y, z = hits[0]
        assert torch.equal(out["label"], data["label"][x : x + 6, y : y + 6, z : z + 6])


def test_patch_centre_is_drawn_as_documented():
    """pos_fraction=1: every patch holds a foreground voxel, even one at a corner (the patch is shifted inside)."""
    data = _volume(shape=(30, 30, 30), fg_at=(0, 29, 0), fg=1)
    t = train_transforms((8, 8, 8), pos_fraction=1.0, flip_prob=0.0, affine_prob=0.0, seed=0)
    assert all(t(data)["label"].sum() == 1 for _ in range(20))
    t = train_transforms((8, 8, 8), pos_fraction=0.0, flip_prob=0.0, affine_prob=0.0, seed=0)
    assert sum(int(t(data)["label"].sum()) for _ in range(200)) < 40  # random voxels rarely reach the corner


def test_rotation_and_zoom_sample_real_voxels_not_padding():
    # a volume with no zeros: a patch drawn well inside it has no zero voxel after rotation and zoom-out
    data = {"image": torch.ones(1, 40, 40, 40), "label": torch.zeros(40, 40, 40, dtype=torch.int64)}
    data["label"][20, 20, 20] = 1
    t = train_transforms((10, 10, 10), pos_fraction=1.0, affine_prob=1.0, intensity_prob=0.0, noise_prob=0.0,
                         seed=0)  # fmt: skip
    for _ in range(10):
        assert (t(data)["image"] - 1).abs().max() < 1e-4  # padding would bring values near 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"patch_size": (8, 8)}, "patch_size must be 3 positive integers"),
        ({"patch_size": (8, 8, 8), "scale": (1.4, 0.7)}, "scale must be"),
        ({"patch_size": (8, 8, 8), "affine_prob": 1.5}, "affine_prob must be a number in"),
        ({"patch_size": (8, 8, 8), "pos_fraction": -0.1}, "pos_fraction must be"),
    ],
)
def test_train_transforms_ill_args(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        train_transforms(**kwargs)
