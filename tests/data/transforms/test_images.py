from __future__ import annotations

import numpy as np
import pytest
import torch

from dragsaw.data.transforms.images import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, train_transforms
from dragsaw.errors import ConfigError, DataError


def sample(h=20, w=28, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.int64)
    label[4:14, 6:20] = 1
    label[7:11, 10:15] = classes - 1
    image = rng.random((3, h, w)).astype(np.float32)
    return {"image": image, "label": label}


def test_same_seed_same_output_different_seed_differs():
    data = sample()
    a = train_transforms((16, 24), seed=11)(data)
    b = train_transforms((16, 24), seed=11)(data)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    outs = [train_transforms((16, 24), seed=s)(data)["image"] for s in range(3)]
    assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[1], outs[2])


@pytest.mark.parametrize("seed", range(6))
def test_label_stays_integer_within_class_set(seed):
    out = train_transforms((16, 24), seed=seed)(sample(classes=3))
    assert out["image"].shape == (3, 16, 24) and out["image"].dtype == torch.float32
    assert out["label"].shape == (16, 24) and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) <= {0, 1, 2}


@pytest.mark.parametrize("seed", range(4))
def test_image_and_label_move_together(seed):
    # The first image channel is the binary label itself: after the same affine it must still agree with it.
    label = np.zeros((32, 32), np.int64)
    label[8:24, 6:20] = 1
    image = np.stack([label.astype(np.float32)] * 3)
    out = train_transforms((32, 32), seed=seed, mean=0.0, std=1.0)({"image": image, "label": label})
    agree = ((out["image"][0] > 0.5).long() == out["label"]).float().mean().item()
    assert agree > 0.95 and out["label"].sum() > 50


def test_flips_without_affine_are_exact():
    data = sample(16, 16)
    pipe = train_transforms((16, 16), scale=(1.0, 1.0), translate=0.0, rotate_deg=0.0, shear_deg=0.0, flip_prob=1.0,
                            mean=0.0, std=1.0, seed=0)  # fmt: skip
    out = pipe(data)
    np.testing.assert_allclose(out["image"].numpy(), data["image"][:, ::-1, ::-1], atol=1e-5)
    np.testing.assert_array_equal(out["label"].numpy(), data["label"][::-1, ::-1])


def test_eval_normalises_with_imagenet_and_gray_defaults():
    data = sample(10, 12)
    out = eval_transforms((10, 12))(data)
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    np.testing.assert_allclose(out["image"].numpy(), (data["image"] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["label"].numpy(), data["label"])
    gray = {"image": data["image"][:1], "label": data["label"]}
    np.testing.assert_allclose(eval_transforms((10, 12))(gray)["image"][0].numpy(), (gray["image"][0] - 0.5) / 0.25,
                               atol=1e-6)  # fmt: skip
    custom = eval_transforms((10, 12), mean=(0.1, 0.2, 0.3), std=2.0)(data)["image"].numpy()
    np.testing.assert_allclose(custom, (data["image"] - np.array([0.1, 0.2, 0.3])[:, None, None]) / 2.0, atol=1e-6)


def test_eval_resize_is_hw_ordered_and_mask_nearest():
    label = np.array([[0, 1, 2], [2, 1, 0]], np.int64)
    data = {"image": np.zeros((1, 2, 3), np.float32), "label": label}
    out = eval_transforms((4, 6))(data)
    assert out["image"].shape == (1, 4, 6)
    np.testing.assert_array_equal(out["label"].numpy(), np.repeat(np.repeat(label, 2, 0), 2, 1))
    assert eval_transforms((24, 40))(sample(50, 30))["image"].shape == (3, 24, 40)


@pytest.mark.parametrize(
    "kwargs",
    [{"input_size": (0, 5)}, {"input_size": (5,)}, {"input_size": (5, 5), "scale": (1.2, 0.8)},
     {"input_size": (5, 5), "flip_prob": 1.5}, {"input_size": (5, 5), "std": 0.0},
     {"input_size": (5, 5), "image_mode": "lanczos"}, {"input_size": (5, 5), "mean": "abc"}],
)  # fmt: skip
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        train_transforms(**kwargs)


def test_mean_length_must_match_channels():
    with pytest.raises(ConfigError, match="2 values but the image has 3 channels"):
        eval_transforms((4, 4), mean=(0.1, 0.2), std=1.0)(sample(4, 4))


def test_label_shape_error_is_not_wrapped_by_monai():
    data = sample(4, 4)
    data["label"] = data["label"][None]
    with pytest.raises(DataError, match=r"must be 2-D class indices \[\*S\], got shape \(1, 4, 4\)"):
        eval_transforms((4, 4))(data)
