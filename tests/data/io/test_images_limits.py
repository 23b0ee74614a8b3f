"""Huge images are refused from their header with a true message; the pixel limit is configurable."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dragsaw.data.io.images import DEFAULT_MAX_PIXELS, image_channels, read_image, read_mask
from dragsaw.errors import ConfigError, DataError

from _cli import run_cli


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
