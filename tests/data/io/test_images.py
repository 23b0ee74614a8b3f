from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from dragsaw.data.io import images as io2d
from dragsaw.data.cases import Case
from dragsaw.data.io.images import check_same_size, image_channels, read_case, read_image, read_mask
from dragsaw.data.io.labels import map_mask_values
from dragsaw.errors import ConfigError, DataError

# ---------------------------------------------------------------- images


def test_rgb_png_is_scaled_by_255_channel_first(tmp_path, files):
    arr = files.rgb(5, 7)
    out = read_image(files.save(tmp_path / "a.png", arr))
    assert out.dtype == np.float32 and out.shape == (3, 5, 7)
    np.testing.assert_array_equal(out, arr.transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_grayscale_and_16bit(tmp_path, files):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(files.save(tmp_path / "g.png", gray))
    assert out.shape == (1, 3, 4)
    np.testing.assert_array_equal(out[0], gray / np.float32(255.0))
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 7).astype(np.uint16)
    out16 = read_image(files.save(tmp_path / "d.png", deep))
    assert Image.open(tmp_path / "d.png").mode.startswith("I;16")
    np.testing.assert_allclose(out16[0], deep / 65535.0, rtol=0, atol=1e-7)
    assert out16.max() <= 1.0


def test_rgba_drops_alpha_and_palette_gives_colours(tmp_path, files):
    rgb = files.rgb(4, 6)
    rgba = np.concatenate([rgb, np.full((4, 6, 1), 7, np.uint8)], -1)
    out = read_image(files.save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(out, rgb.transpose(2, 0, 1) / np.float32(255.0))
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (3, 2, 2)
    np.testing.assert_allclose(out[:, 0, 1] * 255, [200, 100, 50])
    assert image_channels(tmp_path / "p.png") == 3 and image_channels(tmp_path / "a.png") == 3


def test_bmp_and_bilevel(tmp_path, files):
    arr = files.rgb(4, 4, seed=3)
    np.testing.assert_array_equal(read_image(files.save(tmp_path / "a.bmp", arr)) * 255, arr.transpose(2, 0, 1))
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[0], np.eye(4))
    assert image_channels(tmp_path / "b.png") == 1


def _truncated_png(tmp_path, files):
    path = files.save(tmp_path / "t.png", files.rgb(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_jpeg(tmp_path, files):
    path = files.save(tmp_path / "t.jpg", files.rgb(64, 64), quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _zero(tmp_path, files):
    path = tmp_path / "z.png"
    path.write_bytes(b"")
    return path


def _text(tmp_path, files):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


@pytest.mark.parametrize("make", [_truncated_png, _truncated_jpeg, _zero, _text])
@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, files, make, reader):
    path = make(tmp_path, files)
    with pytest.raises(DataError) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match=str(tmp_path)):
        read_image(tmp_path)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("fg", [255, 1])
def test_binary_masks_map_to_0_1(tmp_path, files, fg):
    mask = files.mask(6, 8, fg)
    out = read_mask(files.save(tmp_path / "m.png", mask))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, (mask > 0).astype(np.int64))


def test_empty_mask_is_all_background(tmp_path, files):
    out = read_mask(files.save(tmp_path / "m.png", np.zeros((3, 3), np.uint8)))
    np.testing.assert_array_equal(out, np.zeros((3, 3)))


def test_unexpected_values_in_binary_task(tmp_path, files):
    path = files.save(tmp_path / "m.png", np.array([[0, 1, 2]], np.uint8))
    with pytest.raises(DataError) as info:
        read_mask(path)
    msg = str(info.value)
    assert str(path) in msg and "{2}" in msg and "value_map" in msg and "num_classes" in msg
    path = files.save(tmp_path / "n.png", np.array([[0, 17, 255]], np.uint8))
    with pytest.raises(DataError, match=r"values \{17\} not accounted"):
        read_mask(path)


def test_value_map_and_class_indices(tmp_path, files):
    stored = np.array([[0, 128, 255], [255, 128, 0]], np.uint8)
    path = files.save(tmp_path / "m.png", stored)
    out = read_mask(path, num_classes=3, value_map={0: 0, 128: 1, 255: 2})
    np.testing.assert_array_equal(out, [[0, 1, 2], [2, 1, 0]])
    with pytest.raises(DataError, match=r"\{255\}"):
        read_mask(path, num_classes=3, value_map={0: 0, 128: 1})
    idx = files.save(tmp_path / "i.png", np.array([[0, 1, 2]], np.uint8))
    np.testing.assert_array_equal(read_mask(idx, num_classes=3), [[0, 1, 2]])
    with pytest.raises(DataError, match="3-class"):
        read_mask(path, num_classes=3)


def test_palette_mask_reads_indices(tmp_path):
    pal = Image.fromarray(np.array([[0, 2], [1, 0]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png", num_classes=3), [[0, 2], [1, 0]])


def test_colour_masks(tmp_path, files):
    grey = np.stack([files.mask(4, 4)] * 3, -1)
    np.testing.assert_array_equal(read_mask(files.save(tmp_path / "g.png", grey)), files.mask(4, 4) // 255)
    colour = grey.copy()
    colour[0, 0] = [255, 0, 0]
    path = files.save(tmp_path / "c.png", colour)
    with pytest.raises(DataError, match="3-channel mask") as info:
        read_mask(path)
    assert str(path) in str(info.value) and "single-channel" in str(info.value)


def test_jpeg_masks_are_thresholded_with_one_warning_per_folder(tmp_path, files):
    # Constant 8x8 blocks aligned with the JPEG grid decode almost exactly; 100 -> 0, 200 -> 1.
    stored = np.kron(np.array([[0, 100], [200, 255]], np.uint8), np.ones((8, 8), np.uint8))
    a = files.save(tmp_path / "masks" / "a.jpg", stored, quality=95)
    b = files.save(tmp_path / "masks" / "b.jpeg", stored, quality=95)
    with pytest.warns(UserWarning, match="thresholded at 128") as record:
        out_a = read_mask(a)
    assert str(a) in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out_b = read_mask(b)  # same folder: no second warning
    expected = (stored >= 128).astype(np.int64)
    np.testing.assert_array_equal(out_a, expected)
    np.testing.assert_array_equal(out_b, expected)
    with pytest.raises(DataError, match="lossy JPEG"):
        read_mask(a, num_classes=3)


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"num_classes": 2, "value_map": {0: 0, 255: 2}},
                                    {"value_map": {"a": 1}}, {"value_map": {}}])  # fmt: skip
def test_bad_options_raise_config_error(tmp_path, files, kwargs):
    path = files.save(tmp_path / "m.png", files.mask())
    with pytest.raises(ConfigError):
        read_mask(path, **kwargs)


def test_map_mask_values_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    keys = [3, 9, 40, 1000]
    vmap = {k: int(rng.integers(0, 4)) for k in keys}
    values = rng.choice(keys, size=(5, 6, 2))
    out = map_mask_values(values, 4, vmap)
    expected = np.empty_like(values)
    for idx in np.ndindex(values.shape):
        expected[idx] = vmap[int(values[idx])]
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------- sizes and cases


def test_size_mismatch_names_both_files_and_sizes(tmp_path, files):
    img = files.save(tmp_path / "a.png", files.rgb(8, 10))
    mask = files.save(tmp_path / "a_mask.png", files.mask(8, 9))
    with pytest.raises(DataError) as info:
        read_case(Case("a", img, mask))
    msg = str(info.value)
    assert str(img) in msg and str(mask) in msg and "8x10" in msg and "8x9" in msg
    with pytest.raises(DataError, match="1x2"):
        check_same_size("i.png", (1, 2), "m.png", (2, 1))
    check_same_size("i.png", (3, 4), "m.png", (3, 4))


def test_read_case_merges_masks_and_fills_negatives(tmp_path, files):
    img = files.save(tmp_path / "a.png", files.rgb(4, 6))
    left = np.zeros((4, 6), np.uint8)
    left[:, :2] = 255
    right = np.zeros((4, 6), np.uint8)
    right[1:3, 4:] = 255
    lp, rp = files.save(tmp_path / "l.png", left), files.save(tmp_path / "r.png", right)
    _, merged = read_case(Case("a", img, lp, {"masks": (lp, rp)}))
    np.testing.assert_array_equal(merged, ((left > 0) | (right > 0)).astype(np.int64))
    image, empty = read_case(Case("n", img, None))
    assert image.shape == (3, 4, 6)
    np.testing.assert_array_equal(empty, np.zeros((4, 6)))
    one, two = np.zeros((4, 6), np.uint8), np.zeros((4, 6), np.uint8)
    one[0, 0], two[0, 0] = 1, 2
    p1, p2 = files.save(tmp_path / "c1.png", one), files.save(tmp_path / "c2.png", two)
    with pytest.raises(DataError, match="different foreground classes"):
        read_case(Case("c", img, p1, {"masks": (p1, p2)}), num_classes=3)


def test_jpeg_warning_registry_is_per_folder(tmp_path, files):
    stored = np.kron(np.array([[0, 255]], np.uint8), np.ones((8, 8), np.uint8))
    paths = [files.save(tmp_path / d / "m.jpg", stored, quality=95) for d in ("x", "y")]
    with pytest.warns(UserWarning) as record:
        for p in paths:
            read_mask(p)
    assert len([r for r in record if "thresholded" in str(r.message)]) == 2
    assert {p.parent.resolve() for p in paths} <= io2d._JPEG_WARNED_DIRS
