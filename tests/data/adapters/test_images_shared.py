"""Integration on the real samples in ``<repo>/../shared/data`` (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dragsaw.data.adapters import find_cases, folder, isic2016, montgomery
from dragsaw.data.io.images import read_case, read_mask

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"

pytestmark = pytest.mark.shared_data


def need(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def test_isic2016_sample_official_layout():
    out = isic2016(need("isic2016-sample"))
    assert {k: len(v) for k, v in out.items()} == {"train": 6, "test": 6}
    assert not {c.case_id for c in out["train"]} & {c.case_id for c in out["test"]}
    for case in out["train"] + out["test"]:
        image, mask = read_case(case)
        assert image.shape[0] == 3 and image.shape[1:] == mask.shape
        assert set(np.unique(mask)) == {0, 1}


def test_montgomery_512_via_folder():
    root = need("montgomery-512")
    out = folder(root)
    assert list(out) == ["all"] and len(out["all"]) == 138
    via_adapter = montgomery(root)["all"]
    assert [(c.case_id, c.image, c.mask) for c in via_adapter] == [(c.case_id, c.image, c.mask) for c in out["all"]]
    for case in out["all"][:3]:
        mask = read_mask(case.mask)
        with Image.open(case.image) as im:
            assert im.size[::-1] == mask.shape == (512, 512)
        assert set(np.unique(mask)) == {0, 1}
    assert find_cases("folder", root) == out
