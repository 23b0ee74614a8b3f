"""3D end to end on a tiny Decathlon-layout dataset (4D two-modality images, rotated affine, anisotropic
spacing): cross-validation splits, patch training, sliding-window evaluation and NIfTI prediction in the input's
own geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dragsaw.cli import main
from dragsaw.data import find_cases, write_decathlon

pytestmark = pytest.mark.slow  # every test uses the module's trained 3D run

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


def _ras_spacing(path) -> np.ndarray:
    """Voxel spacing along the RAS axes from a NIfTI header (independent of dragsaw's reader)."""
    img = nib.load(str(path))
    axes = nib.io_orientation(img.affine)[:, 0].astype(int)
    spacing = np.empty(3)
    spacing[axes] = [float(z) for z in img.header.get_zooms()[:3]]
    return spacing


def test_cross_validation_fold_and_planned_spacing(run3d, task_dir):
    splits = json.loads((run3d / "splits.json").read_text())
    assert splits["fold"] == 1 and splits["folds"] == 5
    folds = splits["all_folds"]
    assert sorted(i for part in folds for i in part) == sorted(splits["splits"]["train"] + splits["splits"]["val"])
    assert splits["splits"]["val"] == folds[1] and len(splits["splits"]["test"]) == 2
    plan = json.loads((run3d / "plan.json").read_text())  # derived values go to the plan, not config.yaml
    assert plan["modalities"] == ["MRI-A", "MRI-B"]
    # the planned spacing: the per-axis median over the training cases' spacings along RAS (from the headers)
    images = {c.case_id: c.image for c in find_cases("decathlon", str(task_dir))["train"]}
    spacings = [_ras_spacing(images[case_id]) for case_id in splits["splits"]["train"]]
    assert len(spacings) == 4  # 5 training volumes, one of them in the validation fold
    want = np.median(spacings, axis=0)
    np.testing.assert_allclose(want, [1.0, 1.0, 2.5], rtol=1e-6)  # write_decathlon's 1 x 1 x 2.5 mm voxels
    assert isinstance(plan["target_spacing"], list) and all(isinstance(v, float) for v in plan["target_spacing"])
    np.testing.assert_allclose(plan["target_spacing"], want, rtol=1e-6)


def test_metrics_are_per_class_in_the_original_geometry(run3d, task_dir, tmp_path, monkeypatch):
    metrics = json.loads((run3d / "metrics.json").read_text())
    case = metrics["test"]["per_case"][0]
    assert {"dice/1", "dice/2", "hd95/1", "dice_fg"} <= set(case)
    assert case["dice_fg"] == pytest.approx((case["dice/1"] + case["dice/2"]) / 2)
    assert (run3d / "plots" / "test_overlays.png").is_file()

    # evaluate again, recording what every case is scored on and the geometry its prediction is mapped back to
    from dragsaw.inference import evaluate as scoring, outputs

    scored, geometry = [], {}
    case_metrics, to_original = scoring.case_metrics, outputs.to_original_geometry

    def spy_metrics(pred, target, num_classes, **kwargs):
        if num_classes == 3:  # the per-class scores (regions are scored as 2-class maps)
            scored.append((np.asarray(pred).copy(), np.asarray(target).copy(), kwargs.get("spacing")))
        return case_metrics(pred, target, num_classes, **kwargs)

    def spy_geometry(array, meta, *args, **kwargs):
        geometry[meta["path"]] = (np.array(meta["affine"], dtype=float), tuple(int(s) for s in meta["shape"]))
        return to_original(array, meta, *args, **kwargs)

    monkeypatch.setattr(scoring, "case_metrics", spy_metrics)
    monkeypatch.setattr(outputs, "to_original_geometry", spy_geometry)
    assert main(["evaluate", str(run3d), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    evaluated = {c["case_id"]: c for c in again["test"]["per_case"]}
    cases = {c.case_id: c for c in find_cases("decathlon", str(task_dir))["test"]}
    trained = {c["case_id"]: c for c in metrics["test"]["per_case"]}
    assert evaluated.keys() == trained.keys() == cases.keys() and len(cases) == 2
    for case_id, c in cases.items():
        image, label = nib.load(str(c.image)), nib.load(str(c.mask))
        affine, shape = geometry[str(c.image)]  # the prediction goes back onto the input's own grid ...
        np.testing.assert_allclose(affine, image.affine, atol=1e-5)
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
        assert shape == label.shape == image.shape[:3]
        truth = np.asarray(label.dataobj)  # ... and is scored there against the label file as it is on disk
        (pred, target, spacing), = [s for s in scored if s[1].shape == truth.shape and np.array_equal(s[1], truth)]
        assert pred.shape == truth.shape
        np.testing.assert_allclose(spacing, label.header.get_zooms()[:3], rtol=1e-5)  # HD95 in the file's mm
        for k in (1, 2):
            p, g = pred == k, truth == k
            dice = 2 * (p & g).sum() / (p.sum() + g.sum()) if p.sum() + g.sum() else 1.0
            assert evaluated[case_id][f"dice/{k}"] == pytest.approx(dice, rel=1e-5)
            assert trained[case_id][f"dice/{k}"] == pytest.approx(dice, rel=1e-5)  # the run's own evaluation agrees


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
