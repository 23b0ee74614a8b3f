"""Ensembles (mean softmax probabilities of several runs), test-time mirroring and largest-component
post-processing, through the inference functions and through ``dragsaw predict`` / ``dragsaw evaluate``."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dragsaw.data import write_folder
from dragsaw.errors import ConfigError
from dragsaw.inference import (Ensemble, InferenceSettings, check_ensemble, evaluate_loader, infer, infer_members,
                               choose_postprocess, keep_largest_components, mean_probabilities,
                               postprocess_prediction, remove_small_components)
from dragsaw.plan import Plan

from _cli import run_cli, tiny_task, train_argv
from engine.conftest import FAST

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def tiny_model(dims: int, seed: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(CONV[dims](1, 4, 3, padding=1), nn.ReLU(), CONV[dims](4, classes, 1)).eval()


def batch_2d(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 1, 8, 8, generator=g)
    natives = [torch.randint(0, 3, (11, 7), generator=g), torch.randint(0, 3, (8, 8), generator=g)]
    return {"image": images, "label_native": natives, "case_id": ["a", "b"],
            "meta": [{"shape": tuple(n.shape), "path": "unused"} for n in natives]}


def same(a: dict, b: dict) -> bool:
    """Equal metric dicts, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


# ------------------------------------------------------------------ averaging
def test_the_same_model_twice_is_the_model_exactly():
    model, batch = tiny_model(2, 0), batch_2d()
    single, _ = evaluate_loader(model, [batch], 3, include_hd95=False)
    double, _ = evaluate_loader(Ensemble([model, model]), [batch], 3, include_hd95=False)
    assert all(same(a, b) for a, b in zip(single, double))
    z = infer(model, batch["image"], InferenceSettings())[0]
    members, unc = infer_members(Ensemble([model, copy.deepcopy(model)]), batch["image"], InferenceSettings())
    assert unc is None and len(members) == 2
    assert torch.equal(mean_probabilities(members), torch.softmax(z, 1))  # (p + p) / 2 == p, bit for bit


@pytest.mark.parametrize("dims", [2, 3])
def test_two_models_average_their_probabilities_not_their_logits(dims):
    a, b = tiny_model(dims, 1), tiny_model(dims, 2)
    x = torch.randn(1, 1, *([8] * dims), generator=torch.Generator().manual_seed(3))
    settings = InferenceSettings(spatial_dims=dims, roi_size=(8,) * dims if dims == 3 else ())
    members, _ = infer_members(Ensemble([a, b]), x, settings)
    with torch.no_grad():
        by_hand = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        of_logits = torch.softmax((a(x) + b(x)) / 2, 1)
    assert torch.allclose(mean_probabilities(members), by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, of_logits, atol=1e-4)
    assert torch.allclose(Ensemble([a, b])(x), by_hand, atol=1e-6)


def test_ensemble_native_prediction_is_the_argmax_of_the_mean_resized_probabilities():
    a, b, batch = tiny_model(2, 4), tiny_model(2, 5), batch_2d(1)
    per_case, _ = evaluate_loader(Ensemble([a, b]), [batch], 3, include_hd95=False)
    from dragsaw.metrics import case_metrics

    for i, case in enumerate(per_case):
        size = tuple(batch["label_native"][i].shape)
        with torch.no_grad():
            probs = [torch.softmax(F.interpolate(m(batch["image"][i : i + 1]), size=size, mode="bilinear",
                                                 align_corners=False), 1) for m in (a, b)]
        pred = ((probs[0] + probs[1]) / 2)[0].argmax(0)
        expected = case_metrics(pred, batch["label_native"][i], 3, include_hd95=False)
        assert all(case[k] == pytest.approx(v, nan_ok=True) for k, v in expected.items())


# ------------------------------------------------------------------ test-time mirroring
class Symmetric(nn.Module):
    """A flip-equivariant model: a 3x3 convolution whose kernels are symmetric under every flip."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.conv = CONV[dims](1, 2, 3, padding=1)
        with torch.no_grad():
            w = torch.randn_like(self.conv.weight)
            for axis in range(2, w.ndim):
                w = w + w.flip(axis)
            self.conv.weight.copy_(w)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_of_a_flip_equivariant_model_on_a_symmetric_input_changes_nothing(dims):
    torch.manual_seed(dims)
    model = Symmetric(dims).eval()
    x = torch.randn(1, 1, *([6] * dims))
    for axis in range(2, x.ndim):
        x = x + x.flip(axis)  # symmetric under every flip
    roi = (6,) * dims if dims == 3 else ()
    plain, _ = infer(model, x, InferenceSettings(spatial_dims=dims, roi_size=roi))
    mirrored, _ = infer(model, x, InferenceSettings(spatial_dims=dims, roi_size=roi, mirror=True))
    # the flipped passes give the same logits up to summation order: equal to float32 rounding, same arg-max
    assert torch.allclose(plain, mirrored, atol=1e-5)
    assert torch.equal(plain.argmax(1), mirrored.argmax(1))


# ------------------------------------------------------------------ largest component
def test_largest_component_2d_keeps_the_bigger_blob_of_each_class():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:3, 1:3] = 1  # 4 pixels
    mask[5:9, 5:10] = 1  # 20 pixels: kept
    mask[0, 11], mask[1, 10] = 2, 2  # two class-2 pixels touching only at a corner: separate (face connectivity)
    mask[9, 0:3] = 2  # 3 pixels: kept
    out = keep_largest_components(mask, 3)
    expected = np.zeros_like(mask)
    expected[5:9, 5:10] = 1
    expected[9, 0:3] = 2
    assert out.dtype == mask.dtype and np.array_equal(out, expected)
    assert np.array_equal(postprocess_prediction(mask, 3, "none"), mask)


def test_largest_component_3d_keeps_the_bigger_blob():
    mask = torch.zeros(8, 8, 8, dtype=torch.int64)
    mask[0:2, 0:2, 0:2] = 1  # 8 voxels
    mask[4:8, 4:8, 4:7] = 1  # 48 voxels: kept
    mask[2, 2, 2] = 1  # touches the small blob at a corner only
    out = postprocess_prediction(mask, 2, "largest-component")
    expected = torch.zeros_like(mask)
    expected[4:8, 4:8, 4:7] = 1
    assert type(out) is torch.Tensor and out.dtype == torch.int64 and torch.equal(out, expected)


def test_remove_small_keeps_every_part_of_a_class_above_a_tenth_of_its_largest():
    mask = np.zeros((12, 14), np.int16)
    mask[0:5, 0:4] = 1  # 20 pixels: the largest of class 1
    mask[0:4, 8:11] = 1  # 12 pixels: a second lung, kept (>= 2)
    mask[11, 13] = 1  # 1 pixel < 0.1 * 20: removed
    mask[7, 0:2] = 1  # 2 pixels == 0.1 * 20: kept (removed only when smaller)
    mask[9:12, 4:9] = 2  # 15 pixels: class 2's largest
    mask[6, 10] = 2  # 1 pixel < 1.5: removed
    mask[8, 10], mask[9, 11] = 2, 2  # corner neighbours: two 1-pixel components, removed
    out = postprocess_prediction(mask, 3, "remove-small")
    expected = mask.copy()
    expected[11, 13] = expected[6, 10] = expected[8, 10] = expected[9, 11] = 0
    assert out.dtype == mask.dtype and np.array_equal(out, expected)
    # the same in 3D, on a tensor; one component alone is always kept, however small
    vol = torch.zeros(6, 6, 6, dtype=torch.int64)
    vol[0:3, 0:3, 0:3] = 1  # 27 voxels
    vol[5, 5, 5] = 1  # 1 voxel: removed
    vol[5, 0, 5] = 2  # class 2's only component: kept
    got = remove_small_components(vol, 3)
    want = vol.clone()
    want[5, 5, 5] = 0
    assert type(got) is torch.Tensor and got.dtype == torch.int64 and torch.equal(got, want)
    strict = np.zeros_like(mask)  # fraction 0.7: only the largest part of each class is left (12 < 14)
    strict[0:5, 0:4] = 1
    strict[9:12, 4:9] = 2
    assert np.array_equal(remove_small_components(mask, 3, fraction=0.7), strict)


def test_choose_postprocess_takes_the_best_validation_mean_and_none_on_ties():
    def case(none, largest, small):
        return {"dice_fg": none, "dice_fg@largest-component": largest, "dice_fg@remove-small": small}

    got = choose_postprocess([case(0.9, 0.5, 0.92), case(0.8, 0.4, 0.8), case(float("nan"), 1.0, 1.0)])
    assert got["chosen"] == "remove-small" and got["cases"] == 2  # the NaN case is left out of every mean
    assert got["mean_dice_fg"] == pytest.approx({"none": 0.85, "largest-component": 0.45, "remove-small": 0.86})
    assert choose_postprocess([case(0.9, 0.9, 0.9)])["chosen"] == "none"  # only a strict gain changes anything
    assert choose_postprocess([case(0.5, 0.7, 0.6)])["chosen"] == "largest-component"
    with pytest.raises(ConfigError, match="validation split, which has no case"):
        choose_postprocess([])
    with pytest.raises(ConfigError, match="alternatives"):
        choose_postprocess([{"dice_fg": 0.5}])


def test_unknown_postprocess_is_refused():
    with pytest.raises(ConfigError, match="--postprocess 'biggest' is not a post-processing; use one of none, "
                                          "largest-component, remove-small"):
        postprocess_prediction(np.zeros((2, 2)), 2, "biggest")


# ------------------------------------------------------------------ mismatches
def plan(**changes) -> Plan:
    base = dict(spatial_dims=2, input_size=[32, 32], num_classes=2, in_channels=1, normalization="fixed",
                mean=[0.5], std=[0.25])
    return Plan(**{**base, **changes})


@pytest.mark.parametrize("key, value, text", [
    ("input_size", [48, 48], "input_size (a: [32, 32], b: [48, 48])"),
    ("num_classes", 3, "num_classes (a: 2, b: 3)"),
    ("spatial_dims", 3, "spatial_dims (a: 2, b: 3)"),
    ("normalization", "zscore", "normalization (a: 'fixed', b: 'zscore')"),
    ("target_spacing", [1.0, 1.0], "target_spacing (a: None, b: [1.0, 1.0])"),
])
def test_mismatched_plans_are_refused_naming_the_key_and_both_values(key, value, text):
    with pytest.raises(ConfigError) as info:
        check_ensemble([("a", plan()), ("a2", plan()), ("b", plan(**{key: value}))])
    assert str(info.value) == (f"cannot ensemble a and b: their plans differ in {text}; an ensemble averages runs "
                               "with the same classes and preprocessing (e.g. the folds or seeds of one experiment)")
    check_ensemble([("a", plan()), ("b", plan(network={"name": "other"}))])  # the topology may differ


# ------------------------------------------------------------------ end to end
def train(data, out, *extra):
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(data), "--out", str(out), "--quiet"]
    for item in [*FAST, *extra]:
        args += ["--set", item]
    assert run_cli(args).code == 0
    return out


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """12 training + 4 test synthetic pairs of 40x48 (as tests/engine/conftest.py's)."""
    return write_folder(tmp_path_factory.mktemp("synth") / "data", n_train=12, n_test=4, size=(40, 48), seed=1)


@pytest.fixture(scope="module")
def runs(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble-runs")
    return train(tiny_folder, root / "a"), train(tiny_folder, root / "b", "train.seed=7")


def member_probs(run, image):
    """Foreground probability of one run at the image's native size (as predict computes it)."""
    from dragsaw.engine import load_task

    task, _ = load_task(run)
    item = task.plan.reader(value_map=task.config.data.value_map).read_input(image)
    logits, _ = infer(task.model, item["image"][None], InferenceSettings.from_config(task.config, plan=task.plan))
    size = tuple(item["meta"]["shape"])
    return torch.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=False), 1)[0, 1].numpy()


@pytest.mark.slow
def test_predict_ensembles(runs, tiny_folder, tmp_path):
    a, b = runs
    image = sorted((tiny_folder / "test" / "images").iterdir())[0]
    copy_of_a = tmp_path / "a-copy"
    shutil.copytree(a, copy_of_a)
    assert run_cli(["predict", str(a), str(image), "--out", str(tmp_path / "one")]).code == 0
    # runs first (detected as run directories), then inputs; and --ensemble after the inputs
    assert run_cli(["predict", str(a), str(copy_of_a), str(image), "--out", str(tmp_path / "twice")]).code == 0
    assert run_cli(["predict", str(a), str(image), "--out", str(tmp_path / "opt"), "--ensemble", str(a)]).code == 0
    for name in ("mask", "prob", "uncertainty"):
        one = np.asarray(Image.open(tmp_path / "one" / f"{image.stem}_{name}.png"))
        for other in ("twice", "opt"):
            assert np.array_equal(one, np.asarray(Image.open(tmp_path / other / f"{image.stem}_{name}.png"))), name
    result = run_cli(["predict", str(a), str(b), str(image), "--out", str(tmp_path / "ab")])
    assert result.code == 0 and "mean probabilities of 2 runs" in result.out
    prob = np.asarray(Image.open(tmp_path / "ab" / f"{image.stem}_prob.png")).astype(float)
    by_hand = (member_probs(a, image) + member_probs(b, image)) / 2
    assert np.abs(prob - by_hand * 255).max() <= 0.5 + 1e-3  # round(255 p) of the mean probability
    mask = np.asarray(Image.open(tmp_path / "ab" / f"{image.stem}_mask.png"))
    agree = (mask > 0) == (by_hand > 0.5)
    assert agree.mean() > 0.999  # only ties at p == 0.5 up to rounding may differ
    # post-processing: at most one foreground component, a subset of the plain mask
    assert run_cli(["predict", str(a), str(b), str(image), "--out", str(tmp_path / "lcc"),
                    "--postprocess", "largest-component"]).code == 0
    kept = np.asarray(Image.open(tmp_path / "lcc" / f"{image.stem}_mask.png"))
    assert np.array_equal(kept, keep_largest_components(mask // 255, 2) * 255)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lcc" / f"{image.stem}_prob.png")),
                          np.asarray(Image.open(tmp_path / "ab" / f"{image.stem}_prob.png")))


@pytest.mark.slow
def test_evaluate_variants_sit_side_by_side(runs, tiny_folder, tmp_path, monkeypatch):
    a, b = runs
    assert run_cli(["evaluate", str(a)]).code == 0
    assert run_cli(["evaluate", str(a), "--ensemble", str(a)]).code == 0
    assert run_cli(["evaluate", str(a), "--ensemble", str(b), "--tta", "--postprocess", "largest-component"]).code == 0
    folder = a / "evaluation"
    plain = json.loads((folder / "metrics.json").read_text())
    twice = json.loads((folder / "ensemble-2" / "metrics.json").read_text())
    mixed = json.loads((folder / "ensemble-2_tta_largest-component" / "metrics.json").read_text())
    assert plain["variant"] == {"name": "default", "ensemble": None, "ensemble_average": None, "tta": False,
                                "postprocess": "none"}
    assert twice["variant"]["name"] == "ensemble-2"
    assert twice["variant"]["ensemble"] == [str(a / "checkpoints" / "best.ckpt")] * 2
    assert mixed["variant"] == {"name": "ensemble-2_tta_largest-component", "ensemble_average": "softmax probabilities",
                                "ensemble": [str(r / "checkpoints" / "best.ckpt") for r in (a, b)], "tta": True,
                                "postprocess": "largest-component"}
    assert mixed["inference"]["tta"] is True
    for split in ("val", "test"):
        assert all(same(x, y) for x, y in zip(plain[split]["per_case"], twice[split]["per_case"]))
    # --postprocess auto: every choice scored on the same validation predictions, the best used, recorded
    for choice in ("largest-component", "remove-small"):
        assert run_cli(["evaluate", str(a), "--postprocess", choice]).code == 0
    result = run_cli(["evaluate", str(a), "--postprocess", "auto"])
    assert result.code == 0 and "post-processing chosen on 2 validation cases: " in result.out
    auto = json.loads((folder / "postprocess-auto" / "metrics.json").read_text())
    each = {"none": plain, **{c: json.loads((folder / c / "metrics.json").read_text())
                              for c in ("largest-component", "remove-small")}}
    means = {name: np.nanmean([c["dice_fg"] for c in m["val"]["per_case"]]) for name, m in each.items()}
    choice = auto["postprocess_choice"]
    assert choice["mean_dice_fg"] == pytest.approx(means, abs=1e-9) and choice["on"] == "val"
    best = max(means, key=means.get)
    assert choice["chosen"] == (best if means[best] > means["none"] else "none")
    assert auto["variant"]["postprocess"] == choice["chosen"]
    assert f"{choice['chosen']} (mean Dice none {means['none']:.4f}" in result.out
    for split in ("val", "test"):  # scored exactly as the chosen post-processing scores
        assert all(same(x, y) for x, y in zip(auto[split]["per_case"], each[choice["chosen"]][split]["per_case"]))
    other = run_cli(["evaluate", str(a), "--preset", "folder", "--profile", "cpu", "--data-root", str(tiny_folder),
                     "--postprocess", "auto", "--out", str(tmp_path / "other")])
    assert other.code == 2 and "chooses the post-processing on the validation split" in other.message
    assert "another dataset is all test data" in other.message and not (tmp_path / "other").exists()
    # runs whose preprocessing differs are refused before anything is read
    import dragsaw.engine.run as engine_run

    loaded = engine_run.load_task

    def other_size(path, which="best"):
        task, ckpt = loaded(path, which)
        if str(path) == str(b):
            task.plan.input_size = [48, 48]
        return task, ckpt

    monkeypatch.setattr(engine_run, "load_task", other_size)
    result = run_cli(["evaluate", str(a), "--ensemble", str(b), "--out", str(tmp_path / "no")])
    assert result.code == 2
    assert (f"cannot ensemble {a / 'checkpoints' / 'best.ckpt'} and {b / 'checkpoints' / 'best.ckpt'}: their plans "
            "differ in input_size") in result.message
    assert "[32, 32]" in result.message and "[48, 48]" in result.message
    assert not (tmp_path / "no").exists()


def test_predict_needs_an_input_after_the_runs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    result = run_cli(["predict", str(run), str(run), "--out", str(tmp_path / "out")])
    assert result.code == 2
    assert f"predict got the run(s) {run}, {run} but no input" in result.message


# ------------------------------------------------------------------ end to end in 3D
@pytest.fixture(scope="module")
def runs3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble-3d")
    task = tiny_task(root / "Task01", shape=(48, 48, 32))
    for name, seed in (("a", 0), ("b", 7)):
        result = run_cli(train_argv(3, task, root / name, f"train.seed={seed}"))
        assert result.code == 0, result.err
    return task, root / "a", root / "b"


@pytest.mark.slow
def test_predict_and_evaluate_ensembles_of_volumes(runs3d, tmp_path):
    import nibabel as nib

    task, a, b = runs3d
    volume = sorted((task / "imagesTs").glob("*.nii.gz"))[0]
    stem = volume.name[: -len(".nii.gz")]
    outs = {}
    for name, runs in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        result = run_cli(["predict", *map(str, runs), str(volume), "--out", str(tmp_path / name), "--probabilities"])
        assert result.code == 0, result.err
        outs[name] = {kind: nib.load(str(tmp_path / name / f"{stem}_{kind}.nii.gz"))
                      for kind in ("seg", "probs", "uncertainty")}
    source = nib.load(str(volume))
    for kind in ("seg", "probs", "uncertainty"):  # every output in the input's geometry
        assert outs["ab"][kind].shape[:3] == source.shape[:3]
        assert np.allclose(outs["ab"][kind].affine, source.affine, atol=1e-5)
    probs = {k: np.asarray(v["probs"].dataobj, dtype=np.float64) for k, v in outs.items()}
    assert np.abs(probs["ab"] - (probs["a"] + probs["b"]) / 2).max() < 1e-5  # the mean of the members' probabilities
    seg = np.asarray(outs["ab"]["seg"].dataobj)
    argmax = probs["ab"].argmax(-1)
    top2 = np.sort(probs["ab"], -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4  # away from ties, the mask is the argmax of the mean
    assert np.array_equal(seg[clear], argmax[clear]) and clear.mean() > 0.99
    unc = {k: np.asarray(v["uncertainty"].dataobj, dtype=np.float64) for k, v in outs.items()}
    assert np.abs(unc["ab"] - (unc["a"] + unc["b"]) / 2).max() < 1e-5  # UAFS maps averaged too

    # evaluate: the same run twice scores as the run; the mixed variant is recorded and scored per case
    assert run_cli(["evaluate", str(a), "--out", str(tmp_path / "ev1")]).code == 0
    assert run_cli(["evaluate", str(a), "--ensemble", str(a), "--out", str(tmp_path / "ev2")]).code == 0
    result = run_cli(["evaluate", str(a), "--ensemble", str(b), "--tta", "--postprocess", "largest-component",
                      "--out", str(tmp_path / "ev3")])
    assert result.code == 0, result.err
    one, twice, mixed = (json.loads((tmp_path / f"ev{i}" / "metrics.json").read_text()) for i in (1, 2, 3))
    assert all(same(x, y) for x, y in zip(one["test"]["per_case"], twice["test"]["per_case"]))
    assert mixed["variant"]["ensemble"] == [str(r / "checkpoints" / "best.ckpt") for r in (a, b)]
    assert mixed["variant"]["tta"] is True and mixed["variant"]["postprocess"] == "largest-component"
    assert len(mixed["test"]["per_case"]) == len(one["test"]["per_case"]) >= 1
