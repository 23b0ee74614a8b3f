"""Inference options of ``predict`` / ``evaluate``: --device, --precision, --tta/--no-tta, --sw-batch-size,
--num-workers and the progress bar (CPU only: the CUDA paths are checked with a machine that pretends to have GPUs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from dragsaw import cli, engine, inference
from dragsaw.cli import main
from dragsaw.config import apply_overrides, load_preset
from dragsaw.data import write_decathlon
from dragsaw.errors import ConfigError
from dragsaw.inference import InferenceSettings, autocast_dtype, infer, predict_files, resolve_device

from engine.conftest import FAST, tiny_folder  # noqa: F401 (tiny_folder: the session fixture of the end-to-end tests)

# ---------------------------------------------------------------------------------------------------------------
# helpers


class Forwards:
    """Counts the forward passes of a module (a forward hook) and records each one's batch size and autocast state."""

    def __init__(self, module: nn.Module) -> None:
        self.batches: list[int] = []
        self.autocast: list[tuple[bool, torch.dtype]] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.batches.append(int(args[0].shape[0]))
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    @property
    def calls(self) -> int:
        return len(self.batches)


@pytest.fixture(scope="module")
def trained(tiny_folder, tmp_path_factory):  # noqa: F811
    """A tiny 2D run with PDCR and UAFS (one epoch of the end-to-end tests' fast settings)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(tiny_folder), "--out", str(run),
            "--quiet"]
    for item in FAST:
        args += ["--set", item]
    assert main(args) == 0
    return run


@pytest.fixture
def spy_forwards(monkeypatch):
    """Wraps ``load_task`` (as cmd_predict / evaluate_run call it) so that the loaded network's forwards are counted."""
    seen: list[Forwards] = []
    real = engine.load_task

    def load_and_spy(*args, **kwargs):
        task, ckpt = real(*args, **kwargs)
        seen.append(Forwards(task.model))
        return task, ckpt

    monkeypatch.setattr(engine, "load_task", load_and_spy)
    monkeypatch.setattr(engine.run, "load_task", load_and_spy)
    return seen


def input_images(folder, n=2):
    return sorted((folder / "test" / "images").iterdir())[:n]


def tiny_2d(kernel: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, kernel, padding=kernel // 2), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


def tiny_3d(kernel: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, kernel, padding=kernel // 2), nn.ReLU(), nn.Conv3d(4, 3, 1)).eval()


# ---------------------------------------------------------------------------------------------------------------
# --device


def test_resolve_device_on_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inference.device, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu") == resolve_device(" CPU ")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda:7")
    text = str(err.value)
    assert text.startswith("--device cuda:7 but this machine has no CUDA device") and "use --device cpu" in text
    with pytest.raises(ConfigError, match=r"^--device mps but Apple's MPS backend is not available.*use --device cpu"):
        resolve_device("mps")
    for name in ("tpu", "cuda:x", "gpu", "mps:1"):
        with pytest.raises(ConfigError) as err:
            resolve_device(name)
        assert str(err.value) == (f"--device {name!r} is not a device dragsaw can use; use one of auto, cpu, cuda, "
                                  "cuda:N or mps (auto: cuda if available, else mps, else cpu)")


def test_resolve_device_with_one_gpu(monkeypatch):
    """A machine with one CUDA device (pretended: the device is never touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == resolve_device("cuda") == resolve_device("cuda:0") == torch.device("cuda", 0)
    for name in ("cuda:1", "cuda:7"):
        with pytest.raises(ConfigError) as err:
            resolve_device(name)
        assert str(err.value) == (f"--device {name} but this machine has 1 CUDA device(s) (cuda:0); use --device cpu "
                                  "or cuda:0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\) \(cuda:0, cuda:1\); use --device cpu or one of"):
        resolve_device("cuda:2")


def test_cli_refuses_a_missing_device_before_writing(trained, tiny_folder, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    assert main(["predict", str(trained), *map(str, input_images(tiny_folder)), "--out", str(out), "--device",
                 "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda:7 but this machine has no CUDA device" in err and "use --device cpu" in err
    assert not out.exists()
    assert main(["evaluate", str(trained), "--out", str(out), "--device", "tpu"]) == 2
    assert "--device 'tpu' is not a device" in capsys.readouterr().err
    assert main(["predict", str(trained), *map(str, input_images(tiny_folder)), "--out", str(out),
                 "--sw-batch-size", "0"]) == 2
    assert "--sw-batch-size 0 must be >= 1" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# --precision


def test_precision_values():
    assert cli.INFERENCE_PRECISIONS == inference.PRECISIONS
    assert autocast_dtype("32-true", "cpu") is None
    assert autocast_dtype("bf16-mixed", "cpu") == torch.bfloat16
    assert autocast_dtype("16-mixed", "cpu") == torch.float16  # torch >= 2.x autocasts float16 on the CPU too
    with pytest.raises(ConfigError, match=r"^--precision 'fp8' is not an inference precision; use one of 32-true, "):
        autocast_dtype("fp8", "cpu")
    with pytest.raises(ConfigError, match="--precision 'bf16' is not"):
        InferenceSettings(precision="bf16")


def test_precision_refused_where_torch_disables_autocast(monkeypatch):
    """torch only warns (and turns autocast off) for a dtype a device cannot autocast: that must not pass silently."""
    monkeypatch.setitem(inference.device._AUTOCAST_DTYPES, "16-mixed", torch.float64)  # a dtype CPU autocast refuses
    with pytest.raises(ConfigError, match=r"--precision 16-mixed is not supported on cpu .*use --precision 32-true"):
        autocast_dtype("16-mixed", "cpu")


def test_mixed_precision_logits_are_float32_and_close():
    model, x = tiny_2d(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    spy = Forwards(model)
    fp32, _ = infer(model, x, InferenceSettings())
    bf16, _ = infer(model, x, InferenceSettings(precision="bf16-mixed"))
    assert spy.autocast == [(False, spy.autocast[0][1]), (True, torch.bfloat16)]
    assert fp32.dtype == bf16.dtype == torch.float32
    assert torch.equal(fp32, model(x))  # 32-true: the network's own output, untouched
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.05, rtol=0.05)


def test_cli_cpu_bf16_predict_and_evaluate_agree_with_fp32(trained, tiny_folder, tmp_path, spy_forwards):  # noqa: F811
    images = input_images(tiny_folder, 4)
    args = ["predict", str(trained), *map(str, images), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*args, "--out", str(tmp_path / "bf16"), "--precision", "bf16-mixed"]) == 0
    assert {a for a, _ in spy_forwards[0].autocast} == {False}
    assert set(spy_forwards[1].autocast) == {(True, torch.bfloat16)}  # every forward under bf16 autocast
    names = sorted(p.name for p in (tmp_path / "fp32").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "bf16").iterdir())
    differ, agree = 0, []
    for image in images:
        a, b = (np.asarray(Image.open(tmp_path / d / f"{image.stem}_mask.png")) for d in ("fp32", "bf16"))
        agree.append((a == b).mean())
        pa, pb = (np.asarray(Image.open(tmp_path / d / f"{image.stem}_prob.png")).astype(int) for d in ("fp32", "bf16"))
        differ += int((pa != pb).sum())
        # bfloat16 keeps 8 bits of mantissa: foreground probabilities within 0.06 (15 of 255 steps) everywhere
        assert np.abs(pa - pb).max() <= 15
    # threshold: at least 99% of the pixels of every image get the same class in bf16-mixed as in float32
    assert min(agree) >= 0.99, agree
    assert differ > 0  # the network did run in bfloat16

    ev = tmp_path / "ev"
    assert main(["evaluate", str(trained), "--out", str(ev / "fp32"), "--device", "cpu"]) == 0
    assert main(["evaluate", str(trained), "--out", str(ev / "bf16"), "--device", "cpu", "--precision",
                 "bf16-mixed", "--no-tta", "--sw-batch-size", "3"]) == 0
    first, second = (json.loads((ev / d / "metrics.json").read_text()) for d in ("fp32", "bf16"))
    run_sw = yaml.safe_load((trained / "config.yaml").read_text())["train"]["sw_batch_size"]
    assert first["inference"] == {"device": "cpu", "precision": "32-true", "tta": False, "sw_batch_size": run_sw,
                                   "shift": None}
    assert second["inference"] == {"device": "cpu", "precision": "bf16-mixed", "tta": False, "sw_batch_size": 3,
                                    "shift": None}
    for split in ("val", "test"):
        for a, b in zip(first[split]["per_case"], second[split]["per_case"]):
            assert isinstance(b["dice_fg"], float) and abs(a["dice_fg"] - b["dice_fg"]) <= 0.02, (a, b)
    training = json.loads((trained / "metrics.json").read_text())  # the default is today's CPU float32
    assert first["test"]["mean"]["dice_fg"]["mean"] == pytest.approx(training["test"]["mean"]["dice_fg"]["mean"])


# ---------------------------------------------------------------------------------------------------------------
# --tta / --no-tta


@pytest.mark.parametrize("dims, passes", [(2, 3), (3, 4)])
def test_tta_forward_passes(dims, passes):
    model = tiny_2d() if dims == 2 else tiny_3d()
    shape = (1, 3, 16, 16) if dims == 2 else (1, 1, 8, 8, 8)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    spy = Forwards(model)
    roi = (8, 8, 8) if dims == 3 else ()  # one window: one forward per flip
    plain, _ = infer(model, x, InferenceSettings(dims, roi, mirror=False))
    assert spy.calls == 1
    spy.batches.clear()
    mirrored, _ = infer(model, x, InferenceSettings(dims, roi, mirror=True))
    assert spy.calls == passes == 1 + dims
    # the average of the logits over the input and its flip along each spatial axis
    with torch.no_grad():
        axes = range(2, x.ndim)
        expected = (model(x) + sum(model(x.flip(a)).flip(a) for a in axes)) / passes
    # 3D: one window, whose Gaussian blending weights cancel up to rounding
    torch.testing.assert_close(mirrored, expected, rtol=0, atol=1e-6 if dims == 2 else 1e-5)
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # a 3x3 kernel is not flip-equivariant


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_of_a_flip_equivariant_model_changes_nothing(dims):
    """A 1x1-convolution network commutes with flips: mirroring averages 1 + dims copies of the same logits."""
    model = tiny_2d(kernel=1) if dims == 2 else tiny_3d(kernel=1)
    shape = (2, 3, 20, 12) if dims == 2 else (1, 1, 12, 10, 8)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    settings = InferenceSettings(dims, (8, 8, 8) if dims == 3 else (), mirror=False)
    plain, _ = infer(model, x, settings)
    mirrored, _ = infer(model, x, InferenceSettings(dims, settings.roi_size, mirror=True))
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-6)


def test_tta_flip_averages_the_uncertainty_map():
    from dragsaw.uafs import UncertaintySelect

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), UncertaintySelect(4, spatial_dims=2, init_scale=4.0),
                          nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps = [infer(model, x.flip(a) if a else x, InferenceSettings())[1] for a in (None, 2, 3)]
    maps = [maps[0], maps[1].flip(2), maps[2].flip(3)]
    _, unc = infer(model, x, InferenceSettings(mirror=True))
    torch.testing.assert_close(unc, (sum(maps) / 3).clamp(0, 1), rtol=0, atol=1e-6)


def test_cli_tta_flags_change_the_forward_passes(trained, tiny_folder, tmp_path, spy_forwards):  # noqa: F811
    images = input_images(tiny_folder, 2)
    base = ["predict", str(trained), *map(str, images), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "default")]) == 0  # the run's train.mirror (false for 2D presets)
    assert main([*base, "--out", str(tmp_path / "no"), "--no-tta"]) == 0
    assert main([*base, "--out", str(tmp_path / "tta"), "--tta"]) == 0
    assert [spy.calls for spy in spy_forwards] == [2, 2, 6]  # 1 and 3 forwards per image
    for name in (f"{images[0].stem}_mask.png", f"{images[0].stem}_prob.png"):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "no" / name).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# --sw-batch-size


def test_sw_batch_size_sets_the_windows_per_forward():
    config = apply_overrides(load_preset("decathlon", "cpu"), ["data.input_size=[8, 8, 8]"])
    model, x = tiny_3d(), torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    spy = Forwards(model)
    outputs = {}
    for n in (None, 5, 27):
        spy.batches.clear()
        outputs[n], _ = infer(model, x, InferenceSettings.from_config(config, sw_batch_size=n))
        windows = 27  # 3 window positions per axis: 8-voxel windows, half overlapping, over 16 voxels
        size = config.train.sw_batch_size if n is None else n
        expected = [size] * (windows // size) + ([windows % size] if windows % size else [])
        assert spy.batches == expected, (n, spy.batches)
    torch.testing.assert_close(outputs[5], outputs[None], rtol=1e-5, atol=1e-6)  # the same blended result
    with pytest.raises(ConfigError, match=r"--sw-batch-size 0 .* must be a whole number >= 1"):
        InferenceSettings.from_config(config, sw_batch_size=0)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    task = write_decathlon(tmp_path_factory.mktemp("msd") / "Task98", n_train=1, n_test=2, shape=(16, 16, 16),
                           modalities=1, seed=0)
    return sorted((task / "imagesTs").iterdir())


def test_predict_volumes_honours_sw_batch_size_and_tta(volumes, tmp_path):
    config = apply_overrides(load_preset("decathlon", "cpu"), [
        "data.input_size=[8, 8, 8]", "data.target_spacing=[1.0, 1.0, 2.5]", "data.modalities=[MRI]",
        "train.sw_batch_size=2", "train.mirror=false"])
    model = tiny_3d()
    spy = Forwards(model)
    runs = {"default": {}, "sw9": {"sw_batch_size": 9}, "tta": {"tta": True, "sw_batch_size": 27}}
    calls = {}
    for name, options in runs.items():
        spy.batches.clear()
        written, failures = predict_files(model, volumes, tmp_path / name, config, device="cpu", **options)
        assert not failures and len(written) == 2
        calls[name] = list(spy.batches)
    # 27 windows per volume (3 positions per axis), in batches of train.sw_batch_size, volume by volume
    assert calls["default"] == ([2] * 13 + [1]) * 2
    assert calls["sw9"] == [9] * 6
    assert calls["tta"] == [27] * 8  # 1 + 3 passes per volume, all windows of a pass in one forward
    seg = {name: (tmp_path / name / "synth_ts_000_seg.nii.gz").read_bytes() for name in runs}
    assert seg["default"] == seg["sw9"]  # the batch size changes nothing but the speed


# ---------------------------------------------------------------------------------------------------------------
# --num-workers, progress


def test_workers_write_the_same_files_and_report_bad_inputs(trained, tiny_folder, tmp_path, capsys):  # noqa: F811
    images = input_images(tiny_folder, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    base = ["predict", str(trained), str(images[0]), str(bad), *map(str, images[1:]), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "w0")]) == 2
    first = capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "w2"), "--num-workers", "2"]) == 2
    second = capsys.readouterr().err
    assert "broken.png" in first and first.replace("w0", "w2") == second  # the same report
    outputs = [{p.name: p.read_bytes() for p in (tmp_path / d).iterdir()} for d in ("w0", "w2")]
    manifests = [outputs[i].pop(inference.PREDICT_MANIFEST) for i in (0, 1)]
    assert len(outputs[0]) == 3 * 4 and outputs[0] == outputs[1]  # mask, prob, uncertainty, overlay per image
    assert json.loads(manifests[0])["files"].keys() == json.loads(manifests[1])["files"].keys()
    assert not [p for p in (tmp_path / "w2").iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert main([*base, "--out", str(tmp_path / "w3"), "--num-workers", "-1"]) == 2
    assert "--num-workers -1 must be >= 0" in capsys.readouterr().err


def test_progress_bar_on_stderr_only_when_asked(tiny_folder, tmp_path, capsys):  # noqa: F811
    config = apply_overrides(load_preset("folder", "cpu"), ["data.input_size=[32, 32]", "uafs.aux_weight=0"])
    images = input_images(tiny_folder, 2)
    predict_files(tiny_2d(), images, tmp_path / "quiet", config)
    assert capsys.readouterr().err == ""
    predict_files(tiny_2d(), images, tmp_path / "bar", config, progress=True)
    err = capsys.readouterr().err
    assert "predict" in err and "2/2" in err


def test_cli_has_no_progress_bar_when_stderr_is_not_a_terminal(trained, tiny_folder, tmp_path, capsys):  # noqa: F811
    assert main(["predict", str(trained), *map(str, input_images(tiny_folder, 1)), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "predict:" not in err and "it/s" not in err and "file/s" not in err


def test_options_keep_todays_defaults():
    settings = InferenceSettings.from_config(load_preset("decathlon"))
    assert (settings.mirror, settings.sw_batch_size, settings.precision) == (True, 2, "32-true")
    args = cli.build_parser().parse_args(["predict", "RUN", "x.png", "--out", "o"])
    assert (args.device, args.precision, args.tta, args.sw_batch_size, args.num_workers, args.quiet) == \
        ("auto", "32-true", None, None, 0, False)
    assert math.isclose(settings.overlap, 0.5)
