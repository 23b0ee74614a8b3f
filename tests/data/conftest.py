"""Helpers shared by the data tests: tiny image and mask files written with Pillow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)
    return path


def _rgb(h: int = 8, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int = 8, w: int = 10, fg: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    return m


@pytest.fixture
def files() -> SimpleNamespace:
    """``files.save(path, array)``, ``files.rgb(h, w, seed)``, ``files.mask(h, w, fg)``."""
    return SimpleNamespace(save=_save, rgb=_rgb, mask=_mask)
