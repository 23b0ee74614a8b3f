"""Output file modes follow the umask; huge images are refused from their header with a true message."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dragsaw._atomic import atomic_dir, current_umask, write_json_atomic, write_text_atomic
from dragsaw.data.io2d import DEFAULT_MAX_PIXELS, image_channels, read_image, read_mask
from dragsaw.errors import ConfigError, DataError

from .cli_support import run_cli


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda value: os.umask(value)
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ umask
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                     (0o002, 0o664, 0o775)])
def test_atomic_outputs_follow_the_umask(mask, file_mode, dir_mode, umask, tmp_path):
    umask(mask)
    assert current_umask() == mask
    assert mode(write_text_atomic("x\n", tmp_path / "a.txt")) == file_mode
    assert mode(write_json_atomic({"a": 1}, tmp_path / "m.json")) == file_mode
    (tmp_path / "a.txt").chmod(0o600)  # replacing a file gives the new one the umask's mode too
    assert mode(write_text_atomic("y\n", tmp_path / "a.txt")) == file_mode
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("z")
    assert mode(tmp_path / "folder") == dir_mode
    assert (tmp_path / "folder" / "inside.txt").read_text() == "z"


def test_run_and_predict_outputs_are_0644_under_umask_022(umask, tmp_path):
    from dragsaw.data import write_folder

    from .cli_support import FAST2D

    umask(0o022)
    data = write_folder(tmp_path / "data", n_train=6, n_test=2, size=(24, 24), seed=3)
    argv = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(tmp_path / "run"),
            "--quiet"]
    for item in [*FAST2D, "pdcr.enabled=false", "uafs.enabled=false"]:
        argv += ["--set", item]
    assert run_cli(argv).code == 0
    for name in ("metrics.json", "config.yaml", "splits.json", "data.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "checkpoints/best.json", "log.csv", "plots/learning_curves.png"):
        assert mode(tmp_path / "run" / name) == 0o644, name
    image = sorted((data / "test" / "images").iterdir())[0]
    assert run_cli(["predict", str(tmp_path / "run"), str(image), "--out", str(tmp_path / "pred")]).code == 0
    outputs = sorted((tmp_path / "pred").iterdir())
    assert len(outputs) == 4  # mask, prob, overlay and the manifest
    assert {mode(p) for p in outputs} == {0o644}


# ------------------------------------------------------------------ huge images
def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 grayscale PNG whose header (IHDR, CRC fixed) claims ``width`` x ``height``: a few bytes on disk."""
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


def test_huge_png_is_refused_from_its_header_with_the_limit_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("DRAGSAW_MAX_PIXELS", raising=False)
    huge = png_claiming(tmp_path / "huge.png", 20000, 20000)
    assert huge.stat().st_size < 100
    before = Image.MAX_IMAGE_PIXELS
    for reader in (read_image, image_channels, lambda p: read_mask(p)):
        with pytest.raises(DataError) as info:
            reader(huge)
        text = str(info.value)
        assert str(huge) in text and "20000x20000" in text and "400,000,000 pixels" in text
        assert f"{DEFAULT_MAX_PIXELS:,}" in text and "DRAGSAW_MAX_PIXELS=400000000" in text
        assert "complete PNG" not in text and "decompression bomb" not in text.lower()
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit is restored


def test_pixel_limit_is_configurable_and_replaces_pillows(tmp_path, monkeypatch):
    image = tmp_path / "img.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(image)  # 64x48 = 3072 pixels
    monkeypatch.setenv("DRAGSAW_MAX_PIXELS", "3071")
    with pytest.raises(DataError, match=r"64x48 pixels \(WxH, 3,072 pixels\), more than dragsaw's limit of 3,071"):
        read_image(image)
    monkeypatch.setenv("DRAGSAW_MAX_PIXELS", "3072")
    arr = read_image(image)
    assert arr.shape == (3, 48, 64) and float(arr.mean()) == pytest.approx(200 / 255)
    # above Pillow's own decompression-bomb error threshold (2 x 89,478,485) but within dragsaw's default limit:
    # the header is accepted (Pillow would have raised DecompressionBombError while opening it)
    monkeypatch.delenv("DRAGSAW_MAX_PIXELS")
    assert 2 * Image.MAX_IMAGE_PIXELS < 15000 * 15000 <= DEFAULT_MAX_PIXELS
    assert image_channels(png_claiming(tmp_path / "big.png", 15000, 15000)) == 1
    monkeypatch.setenv("DRAGSAW_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="DRAGSAW_MAX_PIXELS='lots' is not a positive integer"):
        read_image(image)


def test_verify_names_the_huge_file_and_a_bad_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("DRAGSAW_MAX_PIXELS", raising=False)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / f"{name}.png")
    png_claiming(root / "images" / "b.png", 20000, 20000)
    result = run_cli(["verify", "--preset", "folder", "--data-root", str(root)])
    assert result.code == 2
    line = next(line for line in result.out.splitlines() if "b.png" in line and "20000x20000" in line)
    assert "DRAGSAW_MAX_PIXELS" in line and "complete PNG" not in line
    monkeypatch.setenv("DRAGSAW_MAX_PIXELS", "-5")
    result = run_cli(["verify", "--preset", "folder", "--data-root", str(root)])
    assert result.code == 2 and "DRAGSAW_MAX_PIXELS='-5' is not a positive integer" in result.message
