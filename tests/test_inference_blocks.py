"""Native-size 2D outputs made a band of columns at a time (resize_logits_in_blocks): the same values as the
whole-image resize, the same predict/evaluate outputs, and no whole K x H x W float tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dragsaw.data import ImageReader
from dragsaw import inference, metrics
from dragsaw.config import apply_overrides, load_preset
from dragsaw.errors import ConfigError, DataError
from dragsaw.inference import evaluate_loader, predict_files
from dragsaw.metrics import resize_logits_in_blocks, resize_logits_to
from dragsaw.uafs import UncertaintySelect


@pytest.fixture
def one_thread():
    """Bit-level comparisons with one intra-op thread: PyTorch's CPU kernels round a value differently (fused
    multiply-add or not) depending on where a thread's share of the work starts, so even the whole-image resize of
    today differs in the last bit between thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(classes: int, uafs: bool = True) -> nn.Module:
    torch.manual_seed(classes)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    if uafs:
        layers.append(UncertaintySelect(4, spatial_dims=2, init_scale=4.0))
    layers.append(nn.Conv2d(4, classes, 1))
    return nn.Sequential(*layers).eval()


def config_for(classes: int):
    return apply_overrides(load_preset("folder", "cpu"), ["data.input_size=[32, 32]", f"data.num_classes={classes}",
                                                        "uafs.aux_weight=0"])


def write_image(path, height: int, width: int, seed: int = 0) -> None:
    """A smooth RGB image (cheap to encode) with some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(x / 37.0 + k) * np.cos(y / 53.0 - k) for k in range(3)], -1)
    small = rng.random((8, 8, 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height)), np.float32) / 255
    Image.fromarray(((0.35 * base + 0.5 + 0.3 * (texture - 0.5)).clip(0, 1) * 255).astype(np.uint8)).save(path)


def bands(logits, size, block_pixels):
    out = list(resize_logits_in_blocks(logits, size, block_pixels=block_pixels))
    assert [c.start for c, _ in out] == [0] + [c.stop for c, _ in out[:-1]] and out[-1][0].stop == size[1]
    for cols, band in out:
        assert band.shape == (*logits.shape[:2], size[0], cols.stop - cols.start)
    return out


# ---------------------------------------------------------------------------------------------------------------
# (1) the bands are the whole-image bilinear resize


@pytest.mark.parametrize("src, size", [
    ((32, 32), (1000, 700)),      # integer-ish upscale, several bands
    ((32, 48), (333, 517)),       # non-integer scales, odd sizes
    ((17, 5), (129, 128)),        # odd input, the narrowest width that is cut (two 64-column bands)
    ((1, 1), (300, 200)),         # one source pixel
    ((2, 3), (701, 193)),         # a last band widened to 129 columns
    ((40, 300), (41, 1000)),      # a height enlarged by one row, a width upscale
    ((64, 512), (200, 256)),      # width shrunk (allowed: only the height must grow)
])
@pytest.mark.parametrize("block_pixels", [1, 64 * 200, 10**5])
def test_bands_equal_the_whole_resize_in_float64(src, size, block_pixels):
    g = torch.Generator().manual_seed(sum(src) + sum(size))
    logits = torch.randn(2, 3, *src, generator=g, dtype=torch.float64) * 10
    whole = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    assert torch.equal(whole, resize_logits_to(logits, size))
    out = bands(logits, size, block_pixels)
    if size[0] * size[1] > block_pixels:
        assert len(out) > 1
        widths = [c.stop - c.start for c, _ in out]
        assert all(w % 64 == 0 for w in widths[:-1]) and widths[-1] >= 64  # starts on 64-column boundaries
        if block_pixels == 1:
            assert widths[:-1] == [64] * (len(widths) - 1) and widths[-1] < 128  # the smallest bands
    for cols, band in out:
        assert (band - whole[..., cols]).abs().max().item() <= 1e-12


def test_float32_bands_match_to_rounding_and_single_band_cases():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 4, 24, 40, generator=g) * 20
    whole = resize_logits_to(logits, (900, 1100))
    for cols, band in bands(logits, (900, 1100), 1):
        # PyTorch's own float32 weights: at most rounding apart (grid_sample coordinates would move ~1e-4 here)
        assert (band - whole[..., cols]).abs().max().item() <= 4 * 20 * 2**-23 * 8
    # one band from resize_logits_to: small outputs, narrow outputs, heights that do not grow
    for size, limit in [((900, 1100), 900 * 1100), ((5000, 127), 1), ((24, 5000), 1), ((20, 5000), 1)]:
        (cols, band), = bands(logits, size, limit)
        assert cols == slice(0, size[1]) and torch.equal(band, resize_logits_to(logits, size))


def test_checks_happen_at_the_call():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(DataError):
        resize_logits_in_blocks(torch.zeros(1, 2, 4, 4, 4), (8, 8, 8))
    with pytest.raises(DataError):
        resize_logits_in_blocks(torch.zeros(1, 2, 4, 4, dtype=torch.long), (8, 8))
    with pytest.raises(ConfigError):
        resize_logits_in_blocks(x, (0, 8))
    with pytest.raises(ConfigError):
        resize_logits_in_blocks(x, (8, 8), block_pixels=0)


# ---------------------------------------------------------------------------------------------------------------
# (2) predict and evaluate give the same outputs with small bands as with one whole-image resize


def predict_outputs(tmp_path, name, model, config, image, monkeypatch, block_pixels):
    monkeypatch.setattr(metrics, "RESIZE_BLOCK_PIXELS", block_pixels)
    written, failures = predict_files(model, [image], tmp_path / name, config)
    assert not failures
    return {p.name: p.read_bytes() for p in written}


def test_predict_outputs_are_byte_identical_with_small_bands(tmp_path, monkeypatch, one_thread):
    image = tmp_path / "case.png"
    write_image(image, 301, 457)
    model, config = tiny_model(2), config_for(2)
    whole = predict_outputs(tmp_path, "whole", model, config, image, monkeypatch, 2**40)
    small = predict_outputs(tmp_path, "small", model, config, image, monkeypatch, 1)  # 64-column bands
    mid = predict_outputs(tmp_path, "mid", model, config, image, monkeypatch, 301 * 200)
    assert set(whole) == {"case_mask.png", "case_prob.png", "case_uncertainty.png", "case_overlay.png"}
    mask = np.asarray(Image.open(tmp_path / "whole" / "case_mask.png"))
    assert 0.05 < (mask > 0).mean() < 0.95  # both classes occur: the comparison sees a decision boundary
    for name in whole:
        assert small[name] == whole[name], name
        assert mid[name] == whole[name], name


def test_predict_multiclass_probabilities(tmp_path, monkeypatch, one_thread):
    image = tmp_path / "case.png"
    write_image(image, 257, 390, seed=1)
    model, config = tiny_model(3), config_for(3)
    whole = predict_outputs(tmp_path, "whole", model, config, image, monkeypatch, 2**40)
    small = predict_outputs(tmp_path, "small", model, config, image, monkeypatch, 1)
    for name in ("case_mask.png", "case_uncertainty.png"):
        assert small[name] == whole[name], name
    a, b = (np.load(tmp_path / d / "case_probs.npy") for d in ("whole", "small"))
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape == (3, 257, 390)
    # float32 probabilities within rounding, stored as float16: at most one float16 step apart
    assert np.abs(a.astype(np.float64) - b.astype(np.float64)).max() <= 2**-11


def test_evaluate_loader_same_scores_with_small_bands(monkeypatch, one_thread):
    model = tiny_model(2)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 32, 32, generator=g)
    natives = [torch.randint(0, 2, (333, 517), generator=g), torch.randint(0, 2, (130, 129), generator=g)]
    batch = {"image": images, "label_native": natives, "case_id": ["a", "b"],
             "meta": [{"shape": tuple(n.shape), "path": "unused"} for n in natives]}
    runs = []
    for limit in (2**40, 1):
        monkeypatch.setattr(metrics, "RESIZE_BLOCK_PIXELS", limit)
        runs.append(evaluate_loader(model, [batch], 2, include_hd95=False)[0])
    for whole, small in zip(*runs):
        assert whole.keys() == small.keys()
        for key in whole:
            if isinstance(whole[key], float) and not math.isnan(whole[key]):
                assert small[key] == pytest.approx(whole[key], abs=1e-6), key
            else:
                assert small[key] == whole[key] or (math.isnan(small[key]) and math.isnan(whole[key])), key


# ---------------------------------------------------------------------------------------------------------------
# (3) bounded memory: after the network, no float tensor as large as the whole K x H x W logits


class LargestFloatTensor(TorchDispatchMode):
    """Records the floating-point tensor with the most elements that any torch operation returns once armed."""

    def __init__(self):
        super().__init__()
        self.armed = False
        self.numel = 0
        self.shape = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.armed:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > self.numel:
                    self.numel, self.shape = t.numel(), tuple(t.shape)
        return out


@pytest.mark.slow
def test_large_image_is_predicted_in_bands(tmp_path, monkeypatch):
    height, width, limit = 4000, 4000, 2**20
    image = tmp_path / "big.png"
    Image.new("RGB", (width, height), (128, 128, 128)).save(image, compress_level=1)
    model, config = tiny_model(2), config_for(2)
    record = LargestFloatTensor()
    real_infer = inference.infer

    def infer_then_arm(*args, **kwargs):  # the input pipeline (not what is bounded here) runs before the network
        out = real_infer(*args, **kwargs)
        record.armed = True
        return out

    def skip_overlay(image, pred, out_png, uncertainty=None, **_):  # encoding a 4000 x 8000 RGB PNG is slow
        step = inference.outputs.overlay_step((height, width))  # the preview is subsampled (bounded memory)
        small = (-(-height // step), -(-width // step))
        assert step > 1 and pred.shape == small and uncertainty.shape == small
        out_png.write_bytes(b"")
        return out_png

    def input_only(reader, path):
        """Stands in for the input pipeline, whose anti-aliased downsizing of a 4000 x 4000 image takes ~30 s on
        two cores (and is not what this test bounds): the network input and the native size."""
        return {"image": torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)),
                "meta": {"shape": (height, width), "path": str(path)}}

    def skip_png(array, path):  # so is encoding the three 4000 x 4000 PNGs
        assert array.shape == (height, width) and array.dtype == np.uint8
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(ImageReader, "read_input", input_only)
    monkeypatch.setattr(inference.ensemble, "infer", infer_then_arm)
    monkeypatch.setattr(inference.outputs, "save_overlay_png", skip_overlay)
    monkeypatch.setattr(inference.outputs, "save_png_atomic", skip_png)
    monkeypatch.setattr(inference.outputs, "read_image", lambda path: np.zeros((3, 1, 1), np.float32))  # overlay
    monkeypatch.setattr(metrics, "RESIZE_BLOCK_PIXELS", limit)
    with record:
        written, failures = predict_files(model, [image], tmp_path / "out", config)
    assert not failures and len(written) == 4
    band_width = limit // height // 64 * 64
    # the largest float tensor is one band of 2 classes (the last band may be up to 63 columns wider); resizing
    # the whole image at once would make 2 x 4000 x 4000
    assert record.shape is not None and record.numel <= 2 * height * (band_width + 63), record.shape
    assert record.numel < 2 * height * width // 8


def test_overlay_of_a_large_image_is_a_bounded_preview(tmp_path):
    from PIL import Image

    from dragsaw.inference.outputs import OVERLAY_MAX_SIDE, _write_prediction, overlay_step

    assert overlay_step((OVERLAY_MAX_SIDE, 10)) == 1 and overlay_step((OVERLAY_MAX_SIDE + 1, 10)) == 2
    assert overlay_step((3 * OVERLAY_MAX_SIDE, 5000)) == 3
    h, w = OVERLAY_MAX_SIDE * 2 + 6, 300
    pred = np.zeros((h, w), np.uint8)
    pred[100:900, 50:250] = 1
    probs = (pred * 255).astype(np.uint8)
    image = np.full((3, h, w), 0.5, np.float32)
    unc = np.zeros((h, w), np.float32)
    _write_prediction(tmp_path, "big", image, pred, probs, unc, num_classes=2)
    with Image.open(tmp_path / "big_mask.png") as mask:
        assert mask.size == (w, h)  # the outputs themselves stay at full size
    with Image.open(tmp_path / "big_overlay.png") as overlay:
        step = overlay_step((h, w))
        assert step == 3 and overlay.size == (2 * -(-w // step), -(-h // step))  # image + uncertainty panels
