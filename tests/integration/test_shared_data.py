"""End to end on the real samples in ../shared/data (skipped when absent): official layouts, native sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dragsaw.cli import main

pytestmark = pytest.mark.slow  # training runs on the real samples (30-70 s each)

FAST = ["model.options.channels=[4, 8, 16]", "data.input_size=[64, 64]", "train.epochs=1", "train.batch_size=2",
        "pdcr.encoder_samples=[16, 8]", "pdcr.decoder_samples=[8, 4]", "pdcr.cross_samples=8",
        "pdcr.layers=null", "pdcr.cross_layers=null"]  # 3 stages: no encoder.3, the host's declared taps


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_isic2016_official_layout_train_evaluate_predict(shared_data, tmp_path):
    root = shared_data / "isic2016-sample"
    run = tmp_path / "isic"
    assert main(["train", "--preset", "isic2016", "--profile", "cpu", "--data-root", str(root), "--out", str(run),
                 "--quiet", *sets(FAST)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert len(splits["test"]) == 6 and len(splits["train"]) + len(splits["val"]) == 6  # official 6 + 6 sample
    assert {c["case_id"] for c in metrics["test"]["per_case"]} == set(splits["test"])
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev")]) == 0
    images = sorted((root / "ISBI2016_ISIC_Part1_Test_Data").glob("*.jpg"))[:2]
    assert main(["predict", str(run), *map(str, images), "--out", str(tmp_path / "pred")]) == 0
    for image in images:
        native = Image.open(image).size
        for suffix in ("mask", "prob", "uncertainty"):
            assert Image.open(tmp_path / "pred" / f"{image.stem}_{suffix}.png").size == native
        mask = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_mask.png"))
        assert set(np.unique(mask)) <= {0, 255}


def test_montgomery_generic_folder_evaluated_at_native_resolution(shared_data, tmp_path):
    run = tmp_path / "mc"
    assert main(["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(shared_data / "montgomery-512"),
                 "--out", str(run), "--quiet", *sets(FAST), "--set", "train.max_steps=2",
                 "--set", "train.limit_val_batches=1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert sum(len(v) for v in splits.values()) == 138
    assert len(metrics["test"]["per_case"]) == len(splits["test"]) == round(138 * 0.2)
