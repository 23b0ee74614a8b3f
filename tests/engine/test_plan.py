"""The run's plan (dragsaw.plan.Plan): computed from the training data, saved as RUN/plan.json and in every
checkpoint, reused on resume and at inference, while config.yaml stays as the user wrote it."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from dragsaw.cli import main
from dragsaw.config import apply_overrides, load_preset
from dragsaw.data import find_cases, image_channels, write_decathlon
from dragsaw.errors import ConfigError
from dragsaw.plan import PLAN_VERSION, Plan

from .conftest import FAST

FAST3D = ["data.input_size=[48, 48, 32]", "train.epochs=1", "train.iterations_per_epoch=2", "train.batch_size=1",
          "model.options={deep_supervision: 1, base_filters: 4, max_filters: 16}", "pdcr.encoder_samples=[8, 8]",
          "pdcr.cross_samples=8", "train.sw_batch_size=1"]
SCALES = [(0.8, 0.8), (0.9, 1.2), (1.1, 0.9), (1.2, 1.0), (1.3, 1.1)]  # per training file: file axes 0 and 2


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _ras_spacing(path) -> np.ndarray:
    """Voxel spacing along the RAS axes, from the header (independent of dragsaw's own reader)."""
    img = nib.load(str(path))
    axes = nib.io_orientation(img.affine)[:, 0].astype(int)
    spacing = np.empty(3)
    spacing[axes] = [float(z) for z in img.header.get_zooms()[:3]]
    return spacing


# ---------------------------------------------------------------- fixtures: a tiny 3D run and a tiny 2D run
@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A Decathlon task whose training volumes have different spacings (the median is then a real choice)."""
    root = write_decathlon(tmp_path_factory.mktemp("msd") / "Task97", n_train=5, n_test=2, seed=3)
    images = sorted((root / "imagesTr").iterdir())
    for (sx, sz), image in zip(SCALES, images):
        for path in (image, root / "labelsTr" / image.name):
            img = nib.load(str(path))
            affine = img.affine.copy()
            affine[:3, 0] *= sx
            affine[:3, 2] *= sz
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), str(path))
    return root


@pytest.fixture(scope="module")
def run3d(task_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs3d") / "run"
    args = ["train", "--preset", "decathlon", "--profile", "cpu", "--data-root", str(task_dir), "--out", str(run),
            "--quiet", *_sets(FAST3D)]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def run2d(tiny_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs2d") / "run"
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(tiny_folder), "--out", str(run),
            "--quiet", *_sets([*FAST, "data.normalization=fixed"])]  # dataset-wide mean/std: recorded in the plan
    assert main(args) == 0
    return run


# ---------------------------------------------------------------- the Plan object
def _plan3d() -> Plan:
    config = apply_overrides(load_preset("decathlon", "cpu"), [
        "data.input_size=[48, 48, 32]", "data.num_classes=3", "data.target_spacing=[1.0, 1.0, 2.5]",
        "data.modalities=[CT, MRI]", "data.ct_stats={0: {mean: 40.0, std: 12.5, percentile_00_5: -50, "
        "percentile_99_5: 200}}", "model.options.base_filters=4", "model.options.max_filters=16"])
    return Plan.from_config(config)


def test_round_trip_to_dict_from_dict_save_load(tmp_path):
    plan = _plan3d()
    assert plan.in_channels == 2 and plan.normalization == "modality" and plan.version == PLAN_VERSION
    assert plan.network["name"] == "dynunet" and plan.network["options"]["strides"][0] == [1, 1, 1]
    assert set(plan.user_set) == {"data.target_spacing", "data.modalities", "data.ct_stats"}
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert data["ct_stats"] == {"0": {"mean": 40.0, "std": 12.5, "percentile_00_5": -50.0, "percentile_99_5": 200.0}}
    assert Plan.from_dict(data) == plan
    data["input_size"][0] = 99  # a deep copy: the plan is not changed through it
    assert plan.input_size[0] == 48
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    assert not [p for p in tmp_path.iterdir() if p.name != "plan.json"]  # written atomically, no temporary left
    plan2d = Plan.from_config(apply_overrides(load_preset("folder", "cpu"), ["data.normalization=fixed"]),
                              in_channels=1)
    assert (plan2d.mean, plan2d.std, plan2d.normalization) == ([0.5], [0.25], "fixed")  # the pipeline's defaults
    assert Plan.load(plan2d.save(tmp_path / "p2.json")) == plan2d
    zscore = Plan.from_config(load_preset("folder", "cpu"), in_channels=1)  # the preset's per-image z-score
    assert (zscore.mean, zscore.std, zscore.normalization) == (None, None, "zscore")
    assert Plan.load(zscore.save(tmp_path / "p3.json")) == zscore


@pytest.mark.parametrize("content,match", [
    ("{not json", r"is damaged \(not valid JSON"),
    ("[1, 2]", "does not hold a plan"),
    (json.dumps({"version": 99}), "plan of version 99, this dragsaw reads version 1; upgrade dragsaw"),
    (json.dumps({"version": 1, "spatial_dims": 3}), r"not a complete version-1 plan \(missing \['input_size'"),
    ("BAD_SPACING", r"target_spacing=\[1.0, -1.0, 2.5\] must be a list of 3 positive numbers"),
])
def test_damaged_plan_json_is_named_with_the_fix(tmp_path, content, match):
    if content == "BAD_SPACING":
        data = _plan3d().to_dict()
        data["target_spacing"] = [1.0, -1.0, 2.5]
        content = json.dumps(data)
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        Plan.load(path)
    assert str(path) in str(info.value)
    if "upgrade" not in match:
        assert "delete it" in str(info.value)  # the fix


def test_missing_plan_json_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"plan.json does not exist.*checkpoint"):
        Plan.load(tmp_path / "plan.json")


def test_user_values_win_over_planned_ones_and_are_recorded(task_dir):
    cases = find_cases("decathlon", str(task_dir))["train"]
    base = apply_overrides(load_preset("decathlon", "cpu"), [f"data.root={task_dir}", *FAST3D])
    planned = Plan.from_data(base, cases)
    assert planned.user_set == [] and planned.modalities == ["MRI-A", "MRI-B"] and planned.ct_stats is None
    want = np.median([_ras_spacing(c.image) for c in cases], axis=0)
    np.testing.assert_allclose(planned.target_spacing, want, rtol=1e-6)
    mine = apply_overrides(base, ["data.target_spacing=[1.5, 1.5, 3.0]", "data.modalities=[CT, MRI-B]"])
    plan = Plan.from_data(mine, cases)
    assert plan.target_spacing == [1.5, 1.5, 3.0] and plan.modalities == ["CT", "MRI-B"]
    assert plan.user_set == ["data.target_spacing", "data.modalities"]
    assert set(plan.ct_stats) == {"0"} and plan.ct_stats["0"]["std"] > 0  # CT statistics from the training labels
    assert mine.data.ct_stats is None and base.data.target_spacing is None  # the configuration is not changed
    assert plan.network["options"] != planned.network["options"]  # the topology follows the spacing


def test_plan_for_another_model_is_refused():
    from dragsaw.engine import build_network

    plan = _plan3d()
    config = apply_overrides(load_preset("folder", "cpu"), ["model.options.channels=[4, 8, 16, 32]"])
    with pytest.raises(ConfigError, match="made for the model 'dynunet', not 'unet'"):
        build_network(config, 3, plan)


# ---------------------------------------------------------------- 3D runs
@pytest.mark.slow  # a trained run (module fixture)
def test_3d_run_writes_the_planned_spacing_and_leaves_config_yaml_as_written(run3d, task_dir):
    config = yaml.safe_load((run3d / "config.yaml").read_text())
    assert config["data"]["target_spacing"] is None
    assert config["data"]["modalities"] is None and config["data"]["ct_stats"] is None
    plan = Plan.load(run3d / "plan.json")
    train_ids = json.loads((run3d / "splits.json").read_text())["splits"]["train"]
    images = {c.case_id: c.image for c in find_cases("decathlon", str(task_dir))["train"]}
    want = np.median([_ras_spacing(images[i]) for i in train_ids], axis=0)  # the training cases' median spacing
    np.testing.assert_allclose(plan.target_spacing, want, rtol=1e-6)
    assert plan.modalities == ["MRI-A", "MRI-B"] and plan.in_channels == 2 and plan.user_set == []
    assert plan.input_size == [48, 48, 32] and plan.network["name"] == "dynunet"
    ckpt = torch.load(run3d / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert Plan.from_dict(ckpt["hyper_parameters"]["plan"]) == plan  # the checkpoint holds the same plan
    assert ckpt["hyper_parameters"]["config"]["data"]["target_spacing"] is None


def _predict(source, images, out) -> dict:
    assert main(["predict", str(source), *map(str, images), "--out", str(out), "--quiet"]) == 0
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


@pytest.mark.slow  # a trained run (module fixture)
def test_predict_from_the_checkpoint_alone_matches_the_run_directory(run3d, task_dir, tmp_path):
    images = sorted((task_dir / "imagesTs").iterdir())
    with_run = _predict(run3d, images, tmp_path / "run")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run3d / "checkpoints" / "best.ckpt", alone / "model.ckpt")  # no plan.json, no config.yaml
    from_ckpt = _predict(alone / "model.ckpt", images, tmp_path / "ckpt")
    assert len(with_run) == 2 and with_run.keys() == from_ckpt.keys()
    for name in with_run:
        np.testing.assert_array_equal(from_ckpt[name], with_run[name])


@pytest.mark.slow  # a trained run (module fixture)
def test_legacy_checkpoint_without_a_plan_loads_and_predicts_the_same(run3d, task_dir, tmp_path):
    from dragsaw.engine import load_task

    ckpt = torch.load(run3d / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    saved = hparams.pop("plan")  # a checkpoint from before plans: the derived values are in its configuration
    hparams["config"]["data"].update(target_spacing=saved["target_spacing"], modalities=saved["modalities"],
                                     ct_stats=saved["ct_stats"])
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy)
    task, _ = load_task(legacy)
    assert "plan" not in task.hparams or task.hparams["plan"] is None
    plan = Plan.from_dict(saved)
    assert task.plan.target_spacing == plan.target_spacing and task.plan.modalities == plan.modalities
    assert task.plan.network == plan.network and task.plan.in_channels == 2
    images = sorted((task_dir / "imagesTs").iterdir())
    old = _predict(legacy, images, tmp_path / "legacy")
    new = _predict(run3d, images, tmp_path / "new")
    for name in new:
        np.testing.assert_array_equal(old[name], new[name])


# ---------------------------------------------------------------- 2D runs
@pytest.mark.slow  # a trained run (module fixture)
def test_2d_run_writes_plan_json(run2d, tiny_folder):
    plan = Plan.load(run2d / "plan.json")
    channels = image_channels(sorted((tiny_folder / "train" / "images").iterdir())[0])
    assert plan.spatial_dims == 2 and plan.input_size == [32, 32] and plan.in_channels == channels
    assert plan.normalization == "fixed" and plan.mean is not None and len(plan.mean) == channels
    assert plan.target_spacing is None and plan.network == {"name": "unet", "options": {}}
    config = yaml.safe_load((run2d / "config.yaml").read_text())
    assert config["data"]["mean"] is None and config["data"]["std"] is None  # as written: not filled in


@pytest.mark.slow  # a trained run (module fixture)
def test_evaluate_on_another_dataset_reads_it_with_the_models_plan(run2d, tiny_folder, tmp_path):
    from dragsaw.engine import evaluate_run

    def other(*overrides):
        return apply_overrides(load_preset("folder", "cpu"), [f"data.root={tiny_folder}", *overrides])

    same = evaluate_run(run2d, other("data.input_size=[32, 32]"), out=tmp_path / "a", splits=("test",))
    # another input size and normalisation in the evaluation preset change nothing: the model's plan is used
    changed = evaluate_run(run2d, other("data.input_size=[64, 48]", "data.normalization=zscore"),
                           out=tmp_path / "b", splits=("test",))
    assert [c["dice_fg"] for c in changed["test"]["per_case"]] == [c["dice_fg"] for c in same["test"]["per_case"]]


@pytest.mark.slow  # a trained run (module fixture)
def test_resume_reuses_plan_json_and_refuses_a_damaged_one(run2d, tmp_path, monkeypatch, capsys):
    run = tmp_path / "copy"
    shutil.copytree(run2d, run)
    saved = (run / "plan.json").read_text()

    def no_planning(*args, **kwargs):
        raise AssertionError("a resumed run must not plan again")

    monkeypatch.setattr(Plan, "from_data", no_planning)
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=2"]) == 0
    assert (run / "plan.json").read_text() == saved
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["plan"] == json.loads(saved)
    capsys.readouterr()
    (run / "plan.json").write_text('{"version": 1, "spatial_dims": ')
    assert main(["train", "--resume", str(run), "--quiet", "--set", "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert str(run / "plan.json") in err and "damaged" in err and "delete it" in err


def test_differences_name_what_a_configuration_changes():
    plan = _plan3d()
    config = apply_overrides(load_preset("decathlon", "cpu"), ["data.input_size=[48, 48, 32]"])
    assert plan.differences(config) == []  # values the configuration leaves unset are not differences
    moved = apply_overrides(config, ["data.input_size=[64, 64, 32]", "data.target_spacing=[1.0, 1.0, 3.0]"])
    assert plan.differences(moved) == ["data.input_size: [64, 64, 32] != [48, 48, 32]",
                                       "data.target_spacing: [1.0, 1.0, 3.0] != [1.0, 1.0, 2.5]"]
