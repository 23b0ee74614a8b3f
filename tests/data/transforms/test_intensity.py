"""Per-image normalisation, nnU-Net's intensity augmentations and the controlled shifts, in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dragsaw.data.transforms.intensity import intensity_augmentation, intensity_shift, normalizer, parse_shift
from dragsaw.data.transforms.images import NormalizeImage, eval_transforms, train_transforms
from dragsaw.data.transforms.volumes import train_transforms as train_transforms3d
from dragsaw.errors import ConfigError


def _image(channels=1, size=(48, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(channels, *size, generator=g)


@pytest.mark.parametrize("a,b", [(0.5, 0.1), (2.0, -0.3), (0.2, 0.7)])
def test_zscore_input_is_the_same_under_any_brightness_and_contrast(a, b):
    """z-score per image and channel: (a x + b) and x reach the network as the same tensor (exact arithmetic; the
    tolerance is float32 rounding of a normalised value of magnitude <= ~4). At the image's own size: MONAI's
    anti-aliased resize zero-pads its smoothing, so a resized ``x + b`` differs near the borders (by 0.2% of b
    for 48 x 40 -> 32 x 32)."""
    x = _image(3)
    pipe = eval_transforms((48, 40), normalization="zscore")
    one, two = pipe({"image": x})["image"], pipe({"image": a * x + b})["image"]
    torch.testing.assert_close(two, one, rtol=0, atol=2e-5)
    flat = one.flatten(1).double()
    torch.testing.assert_close(flat.mean(1), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)


def test_fixed_normalisation_passes_the_shift_on():
    x = _image(1)
    pipe = eval_transforms((48, 40), normalization="fixed")
    one, two = pipe({"image": x})["image"], pipe({"image": 0.5 * x})["image"]
    torch.testing.assert_close(two, one * 0.5 + (0.5 * 0 - 0.5) / 0.25 * 0.5, rtol=0, atol=1e-5)  # (x/2 - .5)/.25


def test_unknown_normalisation_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match=r"data.normalization must be one of \['fixed', 'zscore'\], got 'minmax'"):
        normalizer("minmax", NormalizeImage())


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentations_change_about_the_share_of_draws_nnunet_gives(dims):
    """Each of the six transforms fires with its own probability: an image is left untouched with probability
    0.9 * 0.8 * 0.85 * 0.85 * 0.75 * 0.7 = 0.2730; 400 draws put the observed share within +-0.08 of it
    (more than 3.5 binomial standard deviations)."""
    from monai.transforms import Compose

    pipe = Compose(intensity_augmentation(dims))
    pipe.set_random_state(seed=3)
    x = _image(2, (24, 20) if dims == 2 else (16, 12, 10))
    x = (x - x.mean()) / x.std()
    untouched = sum(torch.equal(torch.as_tensor(pipe({"image": x.clone()})["image"]).as_subclass(torch.Tensor), x)
                    for _ in range(400))
    assert abs(untouched / 400 - 0.2730) < 0.08


def test_training_pipelines_add_the_augmentations_only_when_asked():
    image, label = _image(1, (32, 32)), torch.zeros(32, 32, dtype=torch.int64)
    plain = [train_transforms((32, 32), seed=s, normalization="zscore") for s in range(2)]
    aug = [train_transforms((32, 32), seed=s, normalization="zscore", intensity=True) for s in range(2)]
    names = [type(t).__name__ for t in aug[0].transforms]
    assert "RandAdjustContrastd" in names and "RandSimulateLowResolutiond" in names
    assert not any(n.startswith(("RandAdjust", "RandGaussian", "RandSimulate")) for n in
                   (type(t).__name__ for t in plain[0].transforms))
    out = aug[0]({"image": image, "label": label})
    assert out["image"].dtype == torch.float32 and type(out["image"]) is torch.Tensor
    names3d = [type(t).__name__ for t in train_transforms3d((16, 16, 16), intensity=True).transforms]
    assert "RandGaussianSmoothd" in names3d and "RandShiftIntensityd" not in names3d
    assert "RandShiftIntensityd" in [type(t).__name__ for t in train_transforms3d((16, 16, 16)).transforms]


def test_shifts_against_hand_computations():
    x = torch.tensor([[[0.0, 0.25], [0.5, 1.0]]])
    torch.testing.assert_close(intensity_shift(x, "gamma-0.5"), x.sqrt())
    torch.testing.assert_close(intensity_shift(x, "gamma-2"), x**2)
    mean = x.mean()
    torch.testing.assert_close(intensity_shift(x, "contrast-0.5"), mean + 0.5 * (x - mean))
    torch.testing.assert_close(intensity_shift(x, "brightness+0.2"), (x * 1.2).clamp(0, 1))
    torch.testing.assert_close(intensity_shift(x, "brightness-0.2"), x * 0.8)
    torch.testing.assert_close(intensity_shift(x * 100, "gamma-2", (0.0, 100.0)), 100 * x**2)


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_spreads_an_impulse_with_the_given_standard_deviation(dims):
    size = (41,) * dims
    x = torch.zeros(1, *size)
    x[(0, *[20] * dims)] = 1.0
    out = intensity_shift(x, "blur-2", (0.0, 1.0)).double()
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    t = torch.arange(41, dtype=torch.float64) - 20
    for axis in range(dims):
        profile = out[0].sum(dim=[d for d in range(dims) if d != axis])
        assert (profile * t**2).sum().item() == pytest.approx(4.0, rel=0.02)  # variance sigma^2, kernel cut at 3 sigma
    torch.testing.assert_close(intensity_shift(torch.full((1, 4, 4), 0.3), "blur-1.5"), torch.full((1, 4, 4), 0.3))


@pytest.mark.parametrize("name,parsed", [("gamma-0.5", ("gamma", 0.5)), ("brightness-0.2", ("brightness", -0.2)),
                                         ("brightness+0.2", ("brightness", 0.2)), ("contrast-0.5", ("contrast", 0.5)),
                                         ("blur-2", ("blur", 2.0))])
def test_parse_shift(name, parsed):
    assert parse_shift(name) == parsed


@pytest.mark.parametrize("name", ["gamma", "gamma+0.5", "contrast-0", "sharpen-1", "brightness-0", ""])
def test_bad_shift_names_are_refused_with_the_forms(name):
    with pytest.raises(ConfigError, match="gamma-G .*blur-S"):
        parse_shift(name)


def test_shifted_dataset_reads_shifted_images(tmp_path):
    from dragsaw.data import ImageReader, SegmentationDataset, find_cases, write_folder

    root = write_folder(tmp_path / "d", n_train=2, n_test=1, size=(40, 48), seed=1)
    cases = find_cases("folder", root)["train"][:1]
    plain = SegmentationDataset(cases, ImageReader((40, 48), normalization="fixed", mean=[0.0], std=[1.0]), train=False)
    dark = SegmentationDataset(cases, ImageReader((40, 48), normalization="fixed", mean=[0.0], std=[1.0], image_shift="brightness-0.5"), train=False)
    a, b = plain[0]["image"], dark[0]["image"]
    channels = a.shape[0]
    assert channels in (1, 3)
    np.testing.assert_allclose(b.numpy(), a.numpy() * 0.5, atol=2e-3)  # float16 cache of the resized image
    with pytest.raises(ConfigError, match="unknown intensity shift 'dim'"):
        SegmentationDataset(cases, ImageReader((40, 48), image_shift="dim"), train=False)
