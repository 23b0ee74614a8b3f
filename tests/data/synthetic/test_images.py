from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dragsaw.data.adapters.images import folder
from dragsaw.data.io.images import read_image, read_mask
from dragsaw.data.synthetic.images import generate, write_folder
from dragsaw.errors import ConfigError, DataError


def best_threshold_dice(gray: np.ndarray, fg: np.ndarray) -> float:
    """Best Dice of any single intensity threshold, either polarity (an oracle that sees the mask)."""
    fg_hist = np.bincount(gray[fg], minlength=256)
    all_hist = np.bincount(gray.ravel(), minlength=256)
    n_fg = fg.sum()
    best = 0.0
    for tp, pred in ((np.cumsum(fg_hist), np.cumsum(all_hist)),  # predict "intensity <= t"
                     (np.cumsum(fg_hist[::-1]), np.cumsum(all_hist[::-1]))):  # predict "intensity >= t"  # fmt: skip
        best = max(best, float((2 * tp / (pred + n_fg)).max()))
    return best


def test_best_threshold_dice_reference_on_a_separable_image():
    gray = np.array([[10, 10, 200, 200]], np.uint8)
    assert best_threshold_dice(gray, gray > 100) == 1.0
    assert best_threshold_dice(gray, gray < 100) == 1.0


def test_shapes_dtypes_and_both_classes():
    data = generate(6, size=(48, 64), seed=1)
    assert len(data) == 6
    for image, mask in data:
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 64) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}
        assert 0.01 < mask.mean() < 0.6


def test_determinism_per_seed_and_prefix():
    a = generate(4, size=(32, 32), seed=3)
    b = generate(4, size=(32, 32), seed=3)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    prefix = generate(2, size=(32, 32), seed=3)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(prefix, a))
    other = generate(4, size=(32, 32), seed=4)
    assert not any(np.array_equal(x[0], y[0]) for x, y in zip(a, other))


def test_not_separable_by_an_intensity_threshold():
    scores = [best_threshold_dice(img.mean(-1).round().astype(np.uint8), m > 0) for img, m in generate(16, (96, 96))]
    assert np.mean(scores) < 0.8, scores


def test_multiclass_cores_are_nested_inside_the_lesion():
    data = generate(6, size=(64, 64), seed=2, num_classes=3)
    for _, mask in data:
        assert set(np.unique(mask)) <= {0, 1, 2}
    assert sum(2 in np.unique(m) for _, m in data) >= 4
    # Class 2 never touches the background directly (a 4-neighbour of a core pixel is never 0).
    for _, mask in data:
        core = mask == 2
        bg = np.pad(mask == 0, 1)
        touches = bg[:-2, 1:-1] | bg[2:, 1:-1] | bg[1:-1, :-2] | bg[1:-1, 2:]
        assert not (core & touches).any()


def test_write_folder_round_trip(tmp_path):
    out = write_folder(tmp_path / "synth", n_train=3, n_test=2, size=(32, 40), seed=5)
    assert out == tmp_path / "synth"
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folder left behind
    cases = folder(out)
    assert {k: len(v) for k, v in cases.items()} == {"train": 3, "test": 2}
    with Image.open(cases["train"][0].mask) as im:
        stored = np.asarray(im)
    assert set(np.unique(stored)) == {0, 255}
    image, mask = generate(1, size=(32, 40), seed=5)[0]
    np.testing.assert_array_equal(read_image(cases["train"][0].image), image.transpose(2, 0, 1) / np.float32(255))
    np.testing.assert_array_equal(read_mask(cases["train"][0].mask), mask)
    assert not np.array_equal(read_image(cases["test"][0].image), read_image(cases["train"][0].image))


def test_write_folder_multiclass_and_no_test(tmp_path):
    out = write_folder(tmp_path / "mc", n_train=2, n_test=0, size=(32, 32), seed=0, num_classes=3)
    assert sorted(p.name for p in out.iterdir()) == ["train"]
    masks = [read_mask(c.mask, num_classes=3) for c in folder(out)["train"]]
    assert all(set(np.unique(m)) <= {0, 1, 2} for m in masks)


def test_write_folder_refuses_to_overwrite(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="non-empty") as info:
        write_folder(tmp_path / "full", n_train=1, n_test=0, size=(16, 16))
    assert str(tmp_path / "full") in str(info.value)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="a file"):
        write_folder(tmp_path / "afile", n_train=1, n_test=0, size=(16, 16))
    (tmp_path / "empty").mkdir()
    write_folder(tmp_path / "empty", n_train=1, n_test=1, size=(16, 16))
    assert (tmp_path / "empty" / "test" / "masks").is_dir()


@pytest.mark.parametrize(
    "kwargs",
    [{"n": -1}, {"n": 1, "size": (8, 8)}, {"n": 1, "size": (32,)}, {"n": 1, "seed": -2}, {"n": 1, "num_classes": 1},
     {"n": 1.5}],
)  # fmt: skip
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        generate(**kwargs)
