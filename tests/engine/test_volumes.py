"""3D end to end on a tiny Decathlon-layout dataset (4D two-modality images, rotated affine, anisotropic
spacing): cross-validation splits, patch training, sliding-window evaluation and NIfTI prediction in the input's
own geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dragsaw.cli import main
from dragsaw.data import write_decathlon

FAST3D = ["data.input_size=[48, 48, 32]", "train.epochs=1", "train.iterations_per_epoch=2", "train.batch_size=1",
          "model.options={deep_supervision: 1, base_filters: 4, max_filters: 16}", "pdcr.encoder_samples=[8, 8]",
          "pdcr.cross_samples=8", "train.sw_batch_size=1"]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_decathlon(tmp_path_factory.mktemp("msd") / "Task99", n_train=5, n_test=2, seed=3)


@pytest.fixture(scope="module")
def run3d(task_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs3d") / "fold1"
    args = ["train", "--preset", "decathlon", "--profile", "cpu", "--data-root", str(task_dir), "--out", str(run),
            "--quiet", "--set", "data.fold=1"]
    for item in FAST3D:
        args += ["--set", item]
    assert main(args) == 0
    return run


def test_cross_validation_fold_and_planned_spacing(run3d, task_dir):
    splits = json.loads((run3d / "splits.json").read_text())
    assert splits["fold"] == 1 and splits["folds"] == 5
    folds = splits["all_folds"]
    assert sorted(i for part in folds for i in part) == sorted(splits["splits"]["train"] + splits["splits"]["val"])
    assert splits["splits"]["val"] == folds[1] and len(splits["splits"]["test"]) == 2
    spacing = [float(v) for v in nib.load(sorted((task_dir / "imagesTr").iterdir())[0]).header.get_zooms()[:3]]
    config = (run3d / "config.yaml").read_text()
    assert "target_spacing" in config and "MRI-A" in config
    assert sorted(spacing)[-1] == pytest.approx(2.5, abs=1e-3)


def test_metrics_are_per_class_in_the_original_geometry(run3d):
    metrics = json.loads((run3d / "metrics.json").read_text())
    case = metrics["test"]["per_case"][0]
    assert {"dice/1", "dice/2", "hd95/1", "dice_fg"} <= set(case)
    assert case["dice_fg"] == pytest.approx((case["dice/1"] + case["dice/2"]) / 2)
    assert (run3d / "plots" / "test_overlays.png").is_file()


def test_predicted_nifti_keeps_shape_and_affine(run3d, task_dir, tmp_path):
    images = sorted((task_dir / "imagesTs").iterdir())
    out = tmp_path / "pred"
    assert main(["predict", str(run3d), *map(str, images), "--out", str(out), "--probabilities"]) == 0
    for image in images:
        src = nib.load(image)
        stem = image.name[: -len(".nii.gz")]
        seg = nib.load(out / f"{stem}_seg.nii.gz")
        assert seg.shape == src.shape[:3]
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        probs = nib.load(out / f"{stem}_probs.nii.gz")
        assert probs.shape == (*src.shape[:3], 3)
        np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-3)
        unc = np.asarray(nib.load(out / f"{stem}_uncertainty.nii.gz").dataobj)
        assert unc.shape == src.shape[:3] and unc.min() >= 0 and unc.max() <= 1


def test_2d_image_given_to_a_3d_model_is_reported(run3d, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "slice.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    assert main(["predict", str(run3d), str(png), "--out", str(tmp_path / "o")]) == 2
    assert "2D image given to a 3D model" in capsys.readouterr().err
