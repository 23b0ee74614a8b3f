"""nnU-Net v2 integration: the wiring on a dynamic_network_architectures U-Net (fast), nnU-Net's trainer lookup and
the trainer's steps (fast), and plan -> train -> predict with the real nnU-Net commands on a tiny synthetic dataset
(slow). Skipped when nnunetv2 is not installed (``pip install dragsaw[nnunet]``)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nnunetv2", reason="needs nnU-Net v2: pip install dragsaw[nnunet]")

from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from dragsaw.integrations import nnunet as dn  # noqa: E402
from dragsaw.taps import FeatureTaps  # noqa: E402
from dragsaw.uafs import UncertaintySelect  # noqa: E402

# stage strides with an anisotropic first pooling, like nnU-Net's plans for thick-slice volumes
STRIDES = [1, (2, 2, 1), 2, 2, 2]
FEATURES = [4, 8, 16, 16, 16]
PATCH = (32, 32, 16)


def _unet(deep_supervision: bool = True) -> PlainConvUNet:
    torch.manual_seed(0)
    return PlainConvUNet(
        1, 5, FEATURES, nn.Conv3d, 3, STRIDES, 1, 3, 1, True, nn.InstanceNorm3d, {"eps": 1e-5, "affine": True},
        None, None, nn.LeakyReLU, {"inplace": True}, deep_supervision=deep_supervision,
    )


# ------------------------------------------------------------------------------------------------ wiring (fast)
def test_taps_at_the_third_and_fourth_encoder_skips():
    net = _unet()
    taps = dn.encoder_taps(net)
    assert taps == {"encoder.stages.2": (16, (4, 4, 2)), "encoder.stages.3": (16, (8, 8, 4))}
    with FeatureTaps(net, list(taps)) as hooks, torch.no_grad():
        net(torch.zeros(1, 1, *PATCH))
        for name, (channels, stride) in taps.items():
            feat = hooks.features[name]
            assert feat.shape[1] == channels
            assert tuple(feat.shape[2:]) == tuple(p // s for p, s in zip(PATCH, stride))
    assert dn.default_tap_stages(6) == (2, 3) and dn.default_tap_stages(4) == (2, 3)
    assert dn.default_tap_stages(3) == (1, 2)  # shallow encoders: the two deepest stages
    with pytest.raises(ValueError, match="0..4"):
        dn.encoder_taps(net, (2, 5))


def test_uafs_after_every_decoder_stage_keeps_the_outputs():
    net = _unet()
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        before = [o.shape for o in net(x)]
    names = dn.insert_uafs(net)
    assert names == [f"decoder.stages.{s}" for s in range(4)]
    for s, channels in enumerate([16, 16, 8, 4]):  # decoder stage s outputs skip -(s + 2)
        stage = net.decoder.stages[s]
        assert isinstance(stage, nn.Sequential) and isinstance(stage[1], UncertaintySelect)
        assert stage[1].channels == channels and stage[1].branches == 2 and stage[1].spatial_dims == 3
    with torch.no_grad():
        assert [o.shape for o in net(x)] == before  # deep supervision: one output per decoder stage, same shapes
    keys = net.state_dict().keys()
    assert any(k.startswith("decoder.stages.0.1.head.") for k in keys)
    with pytest.raises(ValueError, match="already has UAFS"):
        dn.insert_uafs(net)


def test_gradients_reach_the_pdcr_projections_and_the_uafs_heads_and_close_removes_hooks():
    net = _unet()
    dn.insert_uafs(net)
    pdcr, strides = dn.build_pdcr(net, 3, PATCH)
    assert pdcr.temperature == 0.5 and pdcr.cross_weight == 0.01
    assert pdcr.layer_weights == {"encoder.stages.2": 0.01, "encoder.stages.3": 0.01}
    assert pdcr.cross_layers == [("encoder.stages.2", "encoder.stages.3")]
    # stage 2: grid 8x8x8, border 1 -> 216 locations >= 64; stage 3: grid 4x4x4, no border -> 64
    assert pdcr.samples == {"encoder.stages.2": 64, "encoder.stages.3": 64}
    assert strides == {"encoder.stages.2": (4, 4, 2), "encoder.stages.3": (8, 8, 4)}
    taps = FeatureTaps(net, pdcr.tapped)
    modules = [net.get_submodule(n) for n in pdcr.tapped]
    assert all(len(m._forward_hooks) == 1 for m in modules)
    labels = torch.zeros(2, 1, *PATCH, dtype=torch.int16)
    labels[:, :, 8:24, 8:24, 4:12] = 1
    labels[:, :, 12:20, 12:20, 6:10] = 2
    out = net(torch.randn(2, 1, *PATCH))
    result = pdcr(taps.pop(), labels, strides)
    assert set(result.terms) == {"layer/encoder.stages.2", "layer/encoder.stages.3",
                                 "cross/encoder.stages.2~encoder.stages.3"}
    assert all(math.isfinite(float(v)) for v in result.terms.values())
    loss = nn.functional.cross_entropy(out[0], labels[:, 0].long()) + result.total
    loss.backward()
    for p in pdcr.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    heads = [m for m in net.modules() if isinstance(m, UncertaintySelect)]
    assert len(heads) == 4
    for head in heads:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    taps.close()
    assert all(len(m._forward_hooks) == 0 for m in modules) and taps.features == {}


def test_residual_encoder_unet_is_wired_the_same_way():
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    torch.manual_seed(0)
    net = ResidualEncoderUNet(1, 5, FEATURES, nn.Conv3d, 3, STRIDES, [1, 1, 1, 1, 1], 3, 1, True, nn.InstanceNorm3d,
                              {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                              deep_supervision=True)
    assert dn.insert_uafs(net) == [f"decoder.stages.{s}" for s in range(4)]
    pdcr, strides = dn.build_pdcr(net, 3, PATCH)
    assert strides == {"encoder.stages.2": (4, 4, 2), "encoder.stages.3": (8, 8, 4)}
    with FeatureTaps(net, pdcr.tapped) as taps:
        out = net(torch.randn(2, 1, *PATCH))
        result = pdcr(taps.pop(), torch.randint(0, 3, (2, 1, *PATCH)), strides)
    assert len(out) == 4 and torch.isfinite(result.total)


def test_shallow_patch_caps_the_samples():
    net = _unet()
    pdcr, _ = dn.build_pdcr(net, 2, (16, 16, 8), samples=64)
    assert pdcr.samples == {"encoder.stages.2": 64, "encoder.stages.3": 8}  # grids 4x4x4 and 2x2x2, no border


def test_import_without_nnunet_names_the_extra():
    code = "import sys; sys.modules['nnunetv2'] = None\nimport dragsaw\nimport dragsaw.integrations.nnunet"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "pip install dragsaw[nnunet]" in proc.stderr


def test_import_dragsaw_does_not_import_nnunet():
    code = "import sys, dragsaw, dragsaw.integrations; print('nnunetv2' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


# --------------------------------------------------------------------------------------- trainer (fast, in-process)
def _plans(patch=(24, 32, 32)) -> dict:
    """A minimal nnU-Net v2 plans dict for one 3d_fullres configuration with a 4-stage PlainConvUNet."""
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 4, "features_per_stage": [4, 8, 16, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": [2.5, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset998_Fake", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 1, 1],
        "original_median_shape_after_transp": list(patch), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {}, "continue_training": False,
    }


DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "outer": 1, "core": 2},
                "numTraining": 4, "file_ending": ".nii.gz"}


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """An initialised nnUNetTrainerDragsaw on CPU (no preprocessed data: initialize() only needs a file ending)."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    data = tmp_path / "pre" / "Dataset998_Fake" / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case.b2nd").write_bytes(b"")  # infer_dataset_class looks at the file endings only
    tr = dn.nnUNetTrainerDragsaw(_plans(), "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    tr.initialize()
    yield tr
    tr.remove_taps()


def _batch(patch=(24, 32, 32)):
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 1, *patch, dtype=torch.int16)
    labels[:, :, 6:18, 8:24, 8:24] = 1
    labels[:, :, 9:15, 12:20, 12:20] = 2
    scales = [(1, 1, 1), (1, 2, 2), (2, 4, 4)]  # the deep-supervision targets (the lowest output is dropped)
    target = [labels[:, :, :: s[0], :: s[1], :: s[2]] for s in scales]
    return {"data": torch.randn(2, 1, *patch, generator=generator), "target": target}


def test_trainer_builds_uafs_pdcr_and_a_second_parameter_group(trainer):
    net = dn.unwrap(trainer.network)
    assert sum(isinstance(m, UncertaintySelect) for m in net.modules()) == 3
    assert trainer.pdcr is not None and trainer.pdcr.tapped == ["encoder.stages.2", "encoder.stages.3"]
    assert trainer.pdcr_strides == {"encoder.stages.2": (2, 4, 4), "encoder.stages.3": (4, 8, 8)}
    assert trainer.pdcr.num_classes == 3 and trainer.pdcr.temperature == 0.5
    assert len(trainer.optimizer.param_groups) == 2
    assert {id(p) for p in trainer.optimizer.param_groups[1]["params"]} == {id(p) for p in trainer.pdcr.parameters()}
    # what nnUNetv2_predict builds: the same network (UAFS included), so the checkpoint's weights load
    rebuilt = dn.nnUNetTrainerDragsaw.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 3, enable_deep_supervision=False)
    rebuilt.load_state_dict(net.state_dict())
    plain = dn.nnUNetTrainerDragsaw_PDCR.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 3, enable_deep_supervision=False)
    assert not any(isinstance(m, UncertaintySelect) for m in plain.modules())


def test_trainer_step_adds_pdcr_and_logs_the_terms(trainer):
    trainer._taps = FeatureTaps(dn.unwrap(trainer.network), trainer.pdcr.tapped)  # what on_train_start does
    before = [p.detach().clone() for p in trainer.pdcr.parameters()]
    out = trainer.train_step(_batch())
    assert set(out) == {"loss", "pdcr_total", "pdcr/layer/encoder.stages.2", "pdcr/layer/encoder.stages.3",
                        "pdcr/cross/encoder.stages.2~encoder.stages.3"}
    assert all(np.isfinite(v).all() for v in out.values())
    assert out["pdcr_total"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.pdcr.parameters()))  # projections trained
    trainer.on_train_epoch_end([out, out])
    store = trainer.logger.local_logger.my_fantastic_logging
    assert store["pdcr_total"] == [pytest.approx(out["pdcr_total"])]
    assert store["pdcr/cross/encoder.stages.2~encoder.stages.3"][0] > 0
    log = Path(trainer.log_file).read_text()
    assert re.search(r"PDCR total \(weighted, added to the loss\): [0-9.]+; terms \(unweighted\): "
                     r"layer/encoder\.stages\.2 [0-9.]+", log)
    tapped = [dn.unwrap(trainer.network).get_submodule(n) for n in trainer.pdcr.tapped]
    trainer.remove_taps()
    assert all(len(m._forward_hooks) == 0 for m in tapped)


def test_checkpoint_keeps_the_pdcr_projections_next_to_it(trainer, tmp_path):
    path = str(tmp_path / "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    assert Path(path).is_file() and (tmp_path / "checkpoint_latest.pdcr.pth").is_file()
    saved = {k: v.clone() for k, v in trainer.pdcr.state_dict().items()}
    with torch.no_grad():
        for p in trainer.pdcr.parameters():
            p.add_(1.0)
    trainer.load_checkpoint(path)
    assert all(torch.equal(saved[k], v) for k, v in trainer.pdcr.state_dict().items())


def test_uafs_only_trainer_has_no_pdcr(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    tr = dn.nnUNetTrainerDragsaw_UAFS(_plans(), "3d_fullres", 0, DATASET_JSON, torch.device("cpu"))
    tr.network = tr.build_network_architecture(tr.plans_manager, tr.configuration_manager, 1, 3, True)
    optimizer, _ = tr.configure_optimizers()
    assert tr.pdcr is None and len(optimizer.param_groups) == 1
    assert sum(isinstance(m, UncertaintySelect) for m in tr.network.modules()) == 3


# ------------------------------------------------------------------------------------------ nnU-Net's trainer lookup
PRIMUS = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"
# Runs an nnU-Net entry point ("module:function", program name, arguments). nnU-Net's lookup imports every module of
# its own trainer package before the nnUNet_extTrainer folders; one of them (the Primus trainers) needs timm, hence
# torchvision. Where torchvision cannot be imported (e.g. a CPU-only torch next to a CUDA torchvision wheel), that
# import breaks the lookup of every trainer but nnUNetTrainer itself, so the driver then stands in an empty module
# for that one file; the lookup of the dragsaw trainers through nnUNet_extTrainer is otherwise nnU-Net's own.
DRIVER = """
import importlib, sys, types
if sys.argv[1] == "stub":
    sys.modules[{primus!r}] = types.ModuleType({primus!r})
module, function = sys.argv[2].rsplit(":", 1)
sys.argv = sys.argv[3:]
sys.exit(getattr(importlib.import_module(module), function)())
""".format(primus=PRIMUS)
_PRIMUS_OK: list[bool] = []


def _primus_importable() -> bool:
    if not _PRIMUS_OK:
        proc = subprocess.run([sys.executable, "-c", f"import {PRIMUS}"], capture_output=True, timeout=300)
        _PRIMUS_OK.append(proc.returncode == 0)
    return _PRIMUS_OK[0]


def _entry(target: str, program: str, *args: str) -> list[str]:
    """The command line running nnU-Net's entry point ``target`` (see DRIVER)."""
    return [sys.executable, "-c", DRIVER, "plain" if _primus_importable() else "stub", target, program, *args]


@pytest.mark.slow  # imports every trainer module of nnunetv2 in a fresh interpreter (~10 s)
def test_nnunet_finds_the_trainers_through_nnUNet_extTrainer():
    env = {**os.environ, "nnUNet_extTrainer": dn.trainer_path()}
    command = _entry("dragsaw.integrations.nnunet:main", "check", "check")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in dn.TRAINER_NAMES:
        assert f"{name}: dragsaw.integrations.nnunet.{name}" in proc.stdout
    env.pop("nnUNet_extTrainer")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "nnUNet_extTrainer" in proc.stderr


# ---------------------------------------------------------------------------------- plan, train, predict (slow)
SHAPE = (32, 32, 24)  # (X, Y, Z) voxels: 4 stages in nnU-Net's plan, so the 3rd and 4th skips exist
DATASET = "Dataset042_DragsawTiny"


def _write_raw(raw: Path) -> tuple[Path, Path]:
    """Four training cases and one test image in nnU-Net v2's raw layout; returns (dataset folder, test folder)."""
    import nibabel as nib

    from dragsaw.data import generate3d

    root = raw / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    volumes = generate3d(5, shape=SHAPE, seed=7, num_classes=3, modalities=1)
    for i, (image, label, affine) in enumerate(volumes[:4]):
        nib.save(nib.Nifti1Image(image[0], affine), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": 4}))
    test = raw / "test_images"
    test.mkdir()
    image, _, affine = volumes[4]
    nib.save(nib.Nifti1Image(image[0], affine), test / "new_000_0000.nii.gz")
    return root, test


ENTRY_POINTS = {  # nnunetv2's console scripts (its entry_points.txt)
    "nnUNetv2_plan_and_preprocess":
        "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints:plan_and_preprocess_entry",
    "nnUNetv2_train": "nnunetv2.run.run_training:run_training_entry",
    "nnUNetv2_predict": "nnunetv2.inference.predict_from_raw_data:predict_entry_point",
}


def _run(args: list[str], env: dict, log: list) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(_entry(ENTRY_POINTS[args[0]], *args), env=env, capture_output=True, text=True, timeout=900)
    log.append((args[0], round(time.perf_counter() - start, 1)))
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_plan_train_predict_with_the_dragsaw_trainer(tmp_path, monkeypatch):
    import nibabel as nib

    raw, pre, results = tmp_path / "raw", tmp_path / "preprocessed", tmp_path / "results"
    for key, path in (("nnUNet_raw", raw), ("nnUNet_preprocessed", pre), ("nnUNet_results", results)):
        path.mkdir()
        monkeypatch.setenv(key, str(path))
    monkeypatch.setenv("nnUNet_extTrainer", dn.trainer_path())
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_compile", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = dict(os.environ)
    _, test_dir = _write_raw(raw)
    times: list = []

    _run(["nnUNetv2_plan_and_preprocess", "-d", "42", "-c", "3d_fullres", "--verify_dataset_integrity", "-np", "1",
          "-npfp", "1"], env, times)
    plans = json.loads((pre / DATASET / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["n_stages"] >= 4, arch  # the 3rd and 4th encoder skips exist
    # four cases cannot make nnU-Net's default 5 folds: a custom split (an nnU-Net feature), 3 training / 1 val
    ids = [f"case_{i:03d}" for i in range(4)]
    (pre / DATASET / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "val": ids[3:]}]))

    train_env = {**env, "nnUNet_n_proc_DA": "0"}  # data augmentation in the main process (planning needs >= 1)
    _run(["nnUNetv2_train", "42", "3d_fullres", "0", "-tr", "nnUNetTrainerDragsaw_5it", "-device", "cpu"], train_env,
         times)
    fold = results / DATASET / "nnUNetTrainerDragsaw_5it__nnUNetPlans__3d_fullres" / "fold_0"
    logs = sorted(fold.glob("training_log_*.txt"))
    assert logs, sorted(p.name for p in fold.iterdir())
    text = logs[-1].read_text()
    line = next(x for x in text.splitlines() if "PDCR total" in x)
    values = [float(v) for v in re.findall(r"[-+]?(?:\d+\.\d+|nan|inf)", line.split("PDCR total", 1)[1])]
    names = re.findall(r"(layer/\S+|cross/\S+) ", line)
    assert names == ["layer/encoder.stages.2", "layer/encoder.stages.3", "cross/encoder.stages.2~encoder.stages.3"]
    assert len(values) == 4 and all(math.isfinite(v) for v in values) and values[0] > 0, line
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainerDragsaw_5it"
    keys = checkpoint["network_weights"].keys()
    heads = {k.split(".1.head.")[0] for k in keys if ".1.head." in k}
    assert heads == {f"decoder.stages.{s}" for s in range(arch["n_stages"] - 1)}  # UAFS after every decoder stage
    assert checkpoint["logging"]["pdcr_total"][0] > 0
    assert (fold / "checkpoint_final.pdcr.pth").is_file()

    out = tmp_path / "pred"
    _run(["nnUNetv2_predict", "-i", str(test_dir), "-o", str(out), "-d", "42", "-c", "3d_fullres", "-f", "0",
          "-tr", "nnUNetTrainerDragsaw_5it", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
          "--disable_progress_bar"], env, times)
    pred_file = out / "new_000.nii.gz"  # the case id: the file name less the channel suffix _0000
    assert pred_file.is_file(), sorted(p.name for p in out.iterdir())
    source, pred = nib.load(test_dir / "new_000_0000.nii.gz"), nib.load(pred_file)
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
    values = np.unique(np.asarray(pred.dataobj))
    assert values.min() >= 0 and values.max() <= 2, values
    print("\nnnU-Net e2e wall times (s):", times, "\n" + line)
