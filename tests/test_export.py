"""``dragsaw export``: round trips of a 2D (U-Net) and a 3D (DynUNet) run in the three formats, the ONNX model on
image files against ``dragsaw predict``, and the error messages (docs/export.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dragsaw import export as export_module
from dragsaw.engine.run import load_task
from dragsaw.export import TOLERANCE, _runner, reference_outputs
from dragsaw.metrics import resize_logits_in_blocks

from _cli import run_cli, tiny_datasets, tiny_runs, unwritable_dir

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXT = {"onnx": "onnx", "torchscript": "ts", "exported-program": "pt2"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    return tiny_runs(data, tmp_path_factory.mktemp("runs"))


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_round_trip(runs, tmp_path, dims, fmt):
    out = tmp_path / f"model.{EXT[fmt]}"
    result = run_cli(["export", str(runs[dims]), "--format", fmt, "--out", str(out)])
    assert result.code == 0, result.err
    assert "verify" in result.out and "max |diff| probabilities" in result.out
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".json"])  # no temporaries
    assert record["format"] == fmt and record["verification"]["passed"]
    assert record["model"]["uafs"] is True
    pre = record["preprocessing"]
    assert pre["spatial_dims"] == dims and pre["num_classes"] == (2 if dims == 2 else 3)
    if dims == 2:
        assert pre["normalization"] == "zscore" and pre["input_size"] == [32, 32]
    else:
        assert pre["normalization"] == "modality" and len(pre["target_spacing"]) == 3 and len(pre["modalities"]) == 2
    # 2D U-Net: batch and spatial size dynamic in every format; 3D DynUNet: batch only (its padding fixes the size)
    assert record["dynamic"]["batch"] is True
    assert record["dynamic"]["spatial"] is (dims == 2)
    assert len(record["verification"]["cases"]) == (2 if dims == 2 else 1)

    task, _ = load_task(runs[dims])
    run, _ = _runner(fmt, out)
    size = pre["input_size"]
    shapes = [(2, pre["in_channels"], *size)]
    if dims == 2:
        shapes.append((1, pre["in_channels"], *[s + m for s, m in zip(size, record["dynamic"]["size_multiple"])]))
        shapes.append((1, pre["in_channels"], 64, 48))  # and a non-square size, multiple of the total stride 4
    generator = torch.Generator().manual_seed(7)
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        want_p, want_u = reference_outputs(task.model, x)
        got_p, got_u = run(x)
        assert tuple(got_p.shape) == (shape[0], pre["num_classes"], *shape[2:])
        assert tuple(got_u.shape) == (shape[0], 1, *shape[2:])
        assert float((got_p - want_p).abs().max()) <= TOLERANCE["probabilities"]
        assert float((got_u - want_u).abs().max()) <= TOLERANCE["uncertainty"]
        assert float(got_u.max()) > 0  # the real UAFS map, not the zeros of a model without UAFS


@pytest.mark.slow
def test_onnx_on_files_matches_predict(runs, data, tmp_path):
    """The ONNX model on ``plan.reader().read_input(path)`` gives the masks ``dragsaw predict --no-tta`` writes.

    Compared at the file's native size after the same resize: predict resizes the logits bilinearly
    (``resize_logits_in_blocks``) and takes the arg-max; the ONNX model returns probabilities, whose logarithm
    differs from the logits by one value per pixel, which a linear resize carries to every class alike, so the
    arg-max after resizing ``log(probabilities)`` is that of the resized logits.
    """
    onnx = tmp_path / "model.onnx"
    assert run_cli(["export", str(runs[2]), "--format", "onnx", "--out", str(onnx)]).code == 0
    images = sorted((data[2] / "test" / "images").glob("*.png"))[:3]
    predicted = tmp_path / "pred"
    result = run_cli(["predict", str(runs[2]), *map(str, images), "--out", str(predicted), "--no-tta", "--quiet"])
    assert result.code == 0, result.err
    task, _ = load_task(runs[2])
    reader = task.plan.reader()
    run, _ = _runner("onnx", onnx)
    for path in images:
        item = reader.read_input(path)
        probs, _ = run(item["image"][None].float())
        size = tuple(item["meta"]["shape"])
        mask = np.empty(size, dtype=np.uint8)
        for cols, band in resize_logits_in_blocks(torch.log(probs.clamp_min(1e-30)), size):
            mask[:, cols] = band[0].argmax(0).numpy()
        written = np.asarray(Image.open(predicted / f"{path.stem}_mask.png"))
        assert written.shape == size
        assert np.array_equal(written > 0, mask == 1), f"{path.name}: {(written > 0 != (mask == 1)).sum()} pixels"


# ------------------------------------------------------------------ errors
# The options and the output path are checked before the run is read: these tests need no trained run.
NO_RUN = "no-such-run"


def _error(result) -> str:
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    return " ".join(result.err.split())


def test_missing_onnxruntime(tmp_path, monkeypatch):
    real = export_module.importlib.util.find_spec
    monkeypatch.setattr(export_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    out = tmp_path / "m.onnx"
    text = _error(run_cli(["export", NO_RUN, "--format", "onnx", "--out", str(out)]))
    assert text == ('dragsaw export: error: --format onnx needs onnxruntime, which is not installed; install the '
                    'export extra: pip install "dragsaw[export]"')
    assert not out.exists()


def test_unwritable_out(tmp_path):
    folder = unwritable_dir(tmp_path)
    out = folder / "m.ts"
    text = _error(run_cli(["export", NO_RUN, "--format", "torchscript", "--out", str(out)]))
    assert text.startswith(f"dragsaw export: error: cannot write --out '{out}': ")
    assert text.endswith("choose another --out.") or text.endswith(
        "choose a writable --out or fix the folder's permissions.")


def test_out_is_a_folder(tmp_path):
    text = _error(run_cli(["export", NO_RUN, "--format", "torchscript", "--out", str(tmp_path)]))
    assert text == (f"dragsaw export: error: --out '{tmp_path}' is a folder; give a file path for the exported "
                    f"model, e.g. '{tmp_path / 'model.onnx'}'.")


def test_run_without_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    out = tmp_path / "m.ts"
    text = _error(run_cli(["export", str(run), "--format", "torchscript", "--out", str(out)]))
    assert text == (f"dragsaw export: error: run '{run}' has no checkpoint (checkpoints/best.ckpt is missing); train "
                    "it first (`dragsaw train ... --out RUN`, or `dragsaw train --resume RUN`) or pass a .ckpt file.")
    assert not out.exists()


def test_exported_program_needs_pt2(tmp_path):
    out = tmp_path / "m.ep"
    text = _error(run_cli(["export", NO_RUN, "--format", "exported-program", "--out", str(out)]))
    assert text == (f"dragsaw export: error: --out '{out}': torch.export.load reads only files ending in .pt2; use "
                    f"e.g. --out '{tmp_path / 'm.pt2'}' with --format exported-program.")


@pytest.mark.slow
def test_failed_verification_leaves_nothing(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(export_module.TOLERANCE, "probabilities", -1.0)  # every difference is over it
    out = tmp_path / "m.ts"
    text = _error(run_cli(["export", str(runs[2]), "--format", "torchscript", "--out", str(out)]))
    assert text.startswith("dragsaw export: error: the exported torchscript model differs from the PyTorch model on "
                           "input [3, 1, 32, 32]: max |diff| probabilities ")
    assert f"nothing was written to {out}; fix: try another --format or --opset" in text
    assert list(tmp_path.iterdir()) == []


def test_wrapper_without_uafs_returns_zeros():
    from dragsaw.export import ExportWrapper
    from dragsaw.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(2, 1, 3, channels=[4, 8, 16]).eval()
    wrapper = ExportWrapper(model, 2, (1, 1, 16, 16))
    x = torch.randn(2, 1, 16, 20)
    with torch.no_grad():
        probs, unc = wrapper(x)
    want_p, want_u = reference_outputs(model, x)
    assert wrapper.finest is None and torch.equal(unc, torch.zeros(2, 1, 16, 20)) and torch.equal(want_u, unc)
    assert float((probs - want_p).abs().max()) <= TOLERANCE["probabilities"]


def test_missing_run(tmp_path):
    out = tmp_path / "m.ts"
    text = _error(run_cli(["export", str(tmp_path / "nowhere"), "--format", "torchscript", "--out", str(out)]))
    assert text == (f"dragsaw export: error: run '{tmp_path / 'nowhere'}' does not exist; pass the folder a `dragsaw "
                    "train` wrote, or a .ckpt file.")
