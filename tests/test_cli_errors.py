"""Every ``dragsaw`` command on bad input: one paragraph on stderr naming the file or value and the fix, a non-zero
exit code, no traceback (unless ``--debug``) and no partial outputs; 2D and 3D where the data differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from dragsaw import cli
from dragsaw.errors import ConfigError

from _cli import (
    DECATHLON_FAULTS, PRESET, TABLE, broken_task, expected_outputs, gray_folder, predict_inputs_2d, predict_inputs_3d,
    run_cli, tiny_datasets, tiny_runs, tiny_task, train_argv, unwritable_dir, write_table,
)
from _corpus import CORPUS

SRC = Path(__file__).resolve().parents[1] / "src"
DIMS = pytest.mark.parametrize("dims", [2, 3], ids=["2d", "3d"])


@pytest.fixture(autouse=True, scope="module")
def _write_table():
    yield
    if os.environ.get("DRAGSAW_CLI_TABLE"):
        write_table(os.environ["DRAGSAW_CLI_TABLE"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    return tiny_runs(data, tmp_path_factory.mktemp("runs"))


def assert_paragraph(result, command: str, *words: str, code: int = 2) -> None:
    """Exit ``code``; stderr is one ``dragsaw <command>: error:`` paragraph without traceback, holding ``words``."""
    assert result.code == code, result.err
    assert result.err.startswith(f"dragsaw {command}: error: "), result.err
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    assert sum(line.startswith("dragsaw ") for line in result.err.splitlines()) == 1  # one paragraph
    for word in words:
        assert word in result.message, (word, result.err)


# ------------------------------------------------------------------ train on bad datasets
FOLDER_ERRORS = [e for e in CORPUS if e.level == "error" and  # the kinds that come as a folder dataset
                 (e.build.__qualname__.startswith("_folder.") or e.name == "missing_folder")]


def test_every_folder_error_kind_is_covered():
    assert len(FOLDER_ERRORS) >= 15


@pytest.mark.parametrize("entry", FOLDER_ERRORS, ids=lambda e: e.name)
def test_train_on_each_bad_2d_dataset_kind(entry, tmp_path):
    built = entry.build(tmp_path)
    assert built.root is not None
    out = tmp_path / "runs" / "r"
    result = run_cli(train_argv(2, built.root, out, f"data.num_classes={entry.num_classes}"), f"2D {entry.name}")
    assert_paragraph(result, "train", entry.substring)
    assert not (tmp_path / "runs").exists()  # no run directory, not even its parent


@pytest.mark.parametrize("fault", sorted(DECATHLON_FAULTS))
def test_train_and_verify_on_each_bad_3d_dataset_kind(fault, tmp_path):
    name = broken_task(tmp_path / "Task02", fault)
    out = tmp_path / "runs" / "r"
    result = run_cli(train_argv(3, tmp_path / "Task02", out), f"3D {fault}")
    assert_paragraph(result, "train", name)
    assert not (tmp_path / "runs").exists()
    verify = run_cli(["verify", "--preset", "decathlon", "--data-root", str(tmp_path / "Task02")], f"3D {fault}")
    assert_paragraph(verify, "verify", name)
    assert name in verify.out  # the full report on stdout names it too


# ------------------------------------------------------------------ missing paths
@pytest.mark.slow
@DIMS
def test_missing_data_root_run_input(dims, runs, tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = run_cli(train_argv(dims, missing, tmp_path / "runs" / "r"), f"{dims}D missing --data-root")
    assert_paragraph(result, "train", str(missing))
    assert not (tmp_path / "runs").exists()
    result = run_cli(["evaluate", str(runs[dims]), "--preset", PRESET[dims], "--data-root", str(missing), "--out",
                      str(tmp_path / "ev")], f"{dims}D missing --data-root")
    assert_paragraph(result, "evaluate", str(missing))
    assert not (tmp_path / "ev").exists()
    image = tmp_path / ("absent.png" if dims == 2 else "absent.nii.gz")
    result = run_cli(["predict", str(runs[dims]), str(image), "--out", str(tmp_path / "p" / "q")],
                     f"{dims}D missing input file")
    assert result.code == 2 and f"error: {image}: " in result.err and "Traceback" not in result.err
    assert not (tmp_path / "p").exists()  # nothing written: no empty output folder either


MISSING = {
    "missing run": (["evaluate", "{tmp}/no_run"], ["{tmp}/no_run", "neither a run directory"]),
    "missing run ": (["predict", "{tmp}/no_run", "x.png", "--out", "{tmp}/p"], ["{tmp}/no_run", "neither a run"]),
    "missing --resume run": (["train", "--resume", "{tmp}/no_run"], ["{tmp}/no_run", "no config.yaml"]),
    "missing --preset file": (["train", "--preset", "{tmp}/none.yaml", "--data-root", "{tmp}"],
                              ["{tmp}/none.yaml", "does not exist"]),
    "missing --data-root": (["verify", "--preset", "folder", "--data-root", "{tmp}/no_data"],
                            ["{tmp}/no_data", "does not exist"]),
}


@pytest.mark.parametrize("label", sorted(MISSING))
def test_missing_run_preset_or_root(label, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, words = MISSING[label]
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert_paragraph(run_cli(argv, label.strip()), argv[0], *[w.format(tmp=tmp_path) for w in words])
    assert sorted(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ predict over good and bad inputs
@pytest.mark.slow
@DIMS
def test_predict_writes_the_good_and_names_the_bad(dims, runs, data, tmp_path):
    source = sorted((data[2] / "test" / "images").iterdir())[0] if dims == 2 else \
        sorted((data[3] / "imagesTs").iterdir())[0]
    make = predict_inputs_2d if dims == 2 else predict_inputs_3d
    inputs, bad = make(tmp_path / "in", source)
    out = tmp_path / "out"
    result = run_cli(["predict", str(runs[dims]), *map(str, inputs), "--out", str(out)], f"{dims}D predict mix")
    assert result.code == 2 and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(bad)
    for name, word in bad.items():
        hits = [line for line in lines if f"/{name}: " in line and word in line]
        assert hits, (name, word, result.err)
        TABLE.append(("predict", f"{dims}D mix: {name}", result.code, hits[0]))
    good = [p for p in inputs if p.name not in bad]
    stems = [p.name.split(".")[0] for p in good]
    expected = set().union(*(expected_outputs(stem, dims) for stem in stems))
    # no partial files, no temporary folders; the manifest lists exactly what was written
    assert {p.name for p in out.iterdir()} == expected | {".dragsaw-predict.json"}
    assert set(json.loads((out / ".dragsaw-predict.json").read_text())["files"]) == expected
    assert f"for {len(good)} of {len(inputs)} inputs" in result.out
    assert result.err.rstrip().splitlines()[-1].startswith("dragsaw predict: error: ")
    for path, stem in zip(good, stems, strict=True):
        if dims == 2:  # native size, also for the 16-bit PNG
            mask = Image.open(out / f"{stem}_mask.png")
            assert mask.size == Image.open(path).size and set(np.unique(np.asarray(mask))) <= {0, 255}
        else:
            seg = nib.load(out / f"{stem}_seg.nii.gz")
            assert seg.shape == nib.load(path).shape[:3]


@pytest.mark.slow
def test_predict_all_bad_or_empty_folder_leaves_nothing(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(["predict", str(runs[2]), str(empty), "--out", str(tmp_path / "o")], "empty input folder")
    assert_paragraph(result, "predict", str(empty), "holds no files")
    (tmp_path / "bad.png").write_bytes(b"")
    result = run_cli(["predict", str(runs[2]), str(tmp_path / "bad.png"), "--out", str(tmp_path / "o")])
    assert result.code == 2 and "bad.png" in result.err and result.out == ""
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ unwritable outputs
OUTPUT_COMMANDS = {
    "train2d": lambda runs, data, out: train_argv(2, data[2], out),
    "train3d": lambda runs, data, out: train_argv(3, data[3], out),
    "evaluate": lambda runs, data, out: ["evaluate", str(runs[2]), "--out", str(out)],
    "predict2d": lambda runs, data, out: ["predict", str(runs[2]), str(data[2] / "test" / "images"), "--out", str(out)],
    "predict3d": lambda runs, data, out: ["predict", str(runs[3]), str(data[3] / "imagesTs"), "--out", str(out)],
    "synth": lambda runs, data, out: ["synth", "--out", str(out), "--train", "2", "--test", "0", "--size", "16"],
    "demo": lambda runs, data, out: ["demo", "--out", str(out), "--quick"],
}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["unwritable", "existing_file"])
@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_unwritable_output_directory(command, where, runs, data, tmp_path):
    if where == "unwritable":
        out = unwritable_dir(tmp_path)
    else:
        out = tmp_path / "a_file.txt"
        out.write_text("keep me\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run_cli(OUTPUT_COMMANDS[command](runs, data, out), f"--out {where}")
    assert_paragraph(result, command.removesuffix("2d").removesuffix("3d"), str(out), "--out")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created
    assert not (runs[2] / "evaluation").exists()


# ------------------------------------------------------------------ --debug, internal errors, argparse
def test_debug_shows_the_exception_instead_of_the_paragraph(monkeypatch):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        cli.main(["--debug", "train", "--preset", "nope", "--data-root", "x"])

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_presets", broken)  # an unforeseen failure (a bug)
    result = run_cli(["presets"], "internal error (simulated)")
    assert result.code == 3 and "Traceback" not in result.err
    assert "unexpected RuntimeError: boom" in result.message and "--debug" in result.message
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", "presets"])


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_console_process_exit_code_and_traceback(debug):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "dragsaw.cli", *(["--debug"] if debug else []), "train", "--preset", "nope"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if debug:
        assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
        assert "ConfigError: unknown preset 'nope'" in done.stderr
    else:
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("dragsaw train: error: unknown preset 'nope'") and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv,words", [
    (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["predict", "run", "a.png"], ["required: --out"]),
    (["demo", "--dims", "4"], ["invalid choice: 4"]),
    (["synth", "--out", "o", "--size", "abc"], ["invalid int value: 'abc'"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
], ids=["unknown-flag", "missing-out", "bad-dims", "bad-int", "bad-command"])
def test_bad_arguments_exit_2_with_usage(argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(argv, "bad argument")
    assert result.code == 2 and "Traceback" not in result.err and result.err.startswith("usage: dragsaw")
    assert all(w in result.message for w in words) and sorted(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ evaluate on other data, --set, verify --strict
@pytest.mark.slow
@pytest.mark.parametrize("dims,preset", [(2, "decathlon"), (3, "msd-heart")])
def test_evaluate_on_data_with_other_classes(dims, preset, runs, data, tmp_path):
    result = run_cli(["evaluate", str(runs[dims]), "--preset", preset, "--data-root", str(data[3]), "--out",
                      str(tmp_path / "ev")], f"{dims}D run on {preset} data")
    k, other = (2, 3) if dims == 2 else (3, 2)
    assert_paragraph(result, "evaluate", f"predicts {k} classes", f"has {other}", "same classes")
    assert not (tmp_path / "ev").exists()


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3], ids=["2d-run-3d-data", "3d-run-2d-data"])
def test_evaluate_on_data_of_the_other_dimensionality(dims, runs, tmp_path):
    if dims == 2:
        root, argv = tiny_task(tmp_path / "Task03", num_classes=2), ["--preset", "msd-heart"]
    else:
        root = gray_folder(tmp_path / "g3", 6, 2, num_classes=3)
        argv = ["--preset", "folder", "--set", "data.num_classes=3"]
    result = run_cli(["evaluate", str(runs[dims]), *argv, "--data-root", str(root), "--out", str(tmp_path / "ev")],
                     f"{dims}D run on {5 - dims}D data")
    assert_paragraph(result, "evaluate", "2D", "3D")


@pytest.mark.parametrize("item,words", [
    ("train.epoch=1", ["'epoch'", "Did you mean 'epochs'?"]),
    ("nosection.x=1", ["'nosection'", "Valid keys"]),
    ("train.epochs", ["'train.epochs'", "section.key=value"]),
    ("train.epochs=[1", ["'train.epochs=[1'", "not valid YAML"]),
    ("model.options={channels: [4, 8}", ["model.options", "not valid YAML"]),
    ("data.input_size=32", ["input_size", "32"]),
], ids=["bad-key", "bad-section", "no-equals", "bad-yaml", "bad-yaml-dict", "bad-size"])
@DIMS
def test_set_bad_key_or_yaml(dims, item, words, data, tmp_path):
    result = run_cli(train_argv(dims, data[dims], tmp_path / "r", item), f"{dims}D --set {item}")
    assert_paragraph(result, "train", *words)
    assert not (tmp_path / "r").exists()


BAD_VALUES = ["train.epochs=abc", "train.lr=fast", "train.batch_size=0", "train.precision=17"]


@pytest.mark.parametrize("item", BAD_VALUES)
def test_set_bad_value_never_shows_a_traceback(item, data, tmp_path):
    result = run_cli(train_argv(2, data[2], tmp_path / "r", item), f"2D --set {item}")
    assert result.code != 0 and result.err.startswith("dragsaw train: error: ") and "Traceback" not in result.err


@pytest.mark.parametrize("item", BAD_VALUES)
def test_set_bad_value_is_named_before_anything_is_created(item, data, tmp_path):
    result = run_cli(train_argv(2, data[2], tmp_path / "r", item))
    assert_paragraph(result, "train", item.split("=")[0].split(".")[-1])
    assert not (tmp_path / "r").exists()


def test_negative_epochs_are_refused(data, tmp_path):
    assert_paragraph(run_cli(train_argv(2, data[2], tmp_path / "r", "train.epochs=-1")), "train", "epochs")


VERIFY_ENTRIES = [e for e in CORPUS if e.name in ("clean_2d", "png16_image", "empty_mask", "letter_case_pair",
                                                   "duplicate_content", "jpeg_mask_halo", "truncated_png")]


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
@pytest.mark.parametrize("entry", VERIFY_ENTRIES, ids=lambda e: e.name)
def test_verify_exit_codes(entry, strict, tmp_path):
    root = entry.build(tmp_path).root
    argv = ["verify", "--preset", "folder", "--data-root", str(root), *(["--strict"] if strict else [])]
    result = run_cli(argv, f"{entry.name}{' --strict' if strict else ''}")
    code = {"error": 2, "warning": 1 if strict else 0}.get(entry.level, 0)
    assert result.code == code and "Traceback" not in result.err
    if code:
        assert_paragraph(result, "verify", entry.substring, f"{entry.level}(s)", code=code)
    else:
        assert result.err == "" and "problems: 0 error(s)" in result.out
