"""Helpers of the command-line reliability tests: tiny settings, an in-process CLI runner that records what each
bad input produced, tiny 2D/3D datasets, broken inputs for ``predict`` and paths that can never be written.

Set ``DRAGSAW_CLI_TABLE=/some/file.md`` to have the tests write the table of (command, input, exit code, first
line of the message) of every command they ran.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from dragsaw.cli import main
from dragsaw.data import write_decathlon, write_folder

from _corpus import nifti, rgb, save, truncate

FAST2D = ["model.options.channels=[4, 8, 16]", "data.input_size=[32, 32]", "train.epochs=1", "train.batch_size=4",
          "pdcr.encoder_samples=[16, 8]", "pdcr.decoder_samples=[8, 4]", "pdcr.cross_samples=8",
          "pdcr.layers=null", "pdcr.cross_layers=null"]  # 3 stages: no encoder.3, the host's declared taps
FAST3D = ["data.input_size=[48, 48, 32]", "train.epochs=1", "train.iterations_per_epoch=1", "train.batch_size=1",
          "model.options={deep_supervision: 1, base_filters: 4, max_filters: 16}", "pdcr.encoder_samples=[8, 8]",
          "pdcr.cross_samples=8", "train.sw_batch_size=1"]
PRESET = {2: "folder", 3: "decathlon"}

TABLE: list[tuple[str, str, object, str]] = []
"""(command, input, exit code, first message on stderr) of every :func:`run_cli` call with a label."""


@dataclass
class CliResult:
    """Exit code and captured output of one in-process ``dragsaw`` call."""

    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """stderr as one line (the paragraph's line breaks undone)."""
        return " ".join(self.err.split())


def run_cli(argv: list[str], label: str | None = None) -> CliResult:
    """Run ``dragsaw argv`` in-process (argparse's ``SystemExit`` becomes its code); record it when ``label``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    result = CliResult(code, out.getvalue(), err.getvalue())
    if label is not None:
        command = next(a for a in argv if not a.startswith("--"))
        TABLE.append((command, label, code, first_message(result.err)))
    return result


def first_message(err: str) -> str:
    """The first ``dragsaw ...``/``error: ...`` message of stderr, its wrapped lines joined ("" when none)."""
    lines = err.splitlines()
    starts = ("dragsaw", "error:", "usage:")
    for i, line in enumerate(lines):
        if line.startswith(starts[:2]):
            rest = [nxt.strip() for nxt in itertools.takewhile(lambda x: not x.startswith(starts), lines[i + 1:])]
            return " ".join([line, *rest])
    return lines[0] if lines else ""


def write_table(path: str | Path, width: int = 200) -> None:
    """Write :data:`TABLE` as a Markdown table (temporary folders shown as ``<tmp>``, messages cut at ``width``)."""
    rows = ["| command | input | exit | first message on stderr |", "|---|---|---|---|"]
    for command, label, code, text in TABLE:
        text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/]+", "<tmp>", text).replace("|", "/")
        text = text if len(text) <= width else text[: width - 3] + "..."
        rows.append(f"| {command} | {label} | {code} | `{text}` |" if text else f"| {command} | {label} | {code} | |")
    Path(path).write_text("\n".join(rows) + "\n")


def sets(items: list[str]) -> list[str]:
    """``--set`` flags for each override."""
    return [arg for item in items for arg in ("--set", item)]


def train_argv(dims: int, data: Path, out: Path, *extra: str) -> list[str]:
    """``dragsaw train`` with the tiny settings of ``dims`` (the ``cpu`` profile of folder/decathlon)."""
    fast = FAST2D if dims == 2 else FAST3D
    return ["train", "--preset", PRESET[dims], "--profile", "cpu", "--data-root", str(data), "--out", str(out),
            "--quiet", *sets([*fast, *extra])]


# ------------------------------------------------------------------ tiny datasets
def gray_folder(root: Path, n_train: int = 12, n_test: int = 4, size: int = 32, num_classes: int = 2) -> Path:
    """The synthetic folder dataset with 8-bit grayscale images (a 1-channel model reads 16-bit PNGs too)."""
    write_folder(root, n_train=n_train, n_test=n_test, size=(size, size), seed=1, num_classes=num_classes)
    for image in root.glob("*/images/*.png"):
        Image.open(image).convert("L").save(image)
    return root


def tiny_task(root: Path, shape=(16, 16, 16), num_classes: int = 3, n_train: int = 5) -> Path:
    """A Decathlon task (2 modalities, ``num_classes`` classes) of tiny volumes."""
    return write_decathlon(root, n_train=n_train, n_test=1, shape=shape, seed=3, num_classes=num_classes)


def _rewrite(path: Path, edit) -> None:
    """Replace a NIfTI file by ``edit(array, affine) -> (array, affine)``."""
    img = nib.load(str(path))
    array, affine = edit(np.asarray(img.dataobj), img.affine.copy())
    nib.Nifti1Image(array, affine).to_filename(str(path))


def _nan(a, aff):
    a = a.astype(np.float32)
    a[0, 0, 0], a[1, 1, 1] = np.nan, np.inf
    return a, aff


def _label_5(a, aff):
    a = a.copy()
    a[0, 0, 0] = 5
    return a, aff


def _shifted(a, aff):
    aff[0, 3] += 2.0
    return a, aff


DECATHLON_FAULTS = {  # name -> (which file of case 1 is broken, how)
    "truncated_image": ("imagesTr", lambda p: truncate(p, 0.5)),
    "zero_byte_image": ("imagesTr", lambda p: p.write_bytes(b"")),
    "text_as_nifti": ("imagesTr", lambda p: p.write_text("<html>404</html>\n")),
    "nan_inf_image": ("imagesTr", lambda p: _rewrite(p, _nan)),
    "label_value_5": ("labelsTr", lambda p: _rewrite(p, _label_5)),
    "label_shape": ("labelsTr", lambda p: _rewrite(p, lambda a, aff: (a[:, :, :-1], aff))),
    "label_affine": ("labelsTr", lambda p: _rewrite(p, _shifted)),
    "missing_label": ("labelsTr", lambda p: p.unlink()),
}


def broken_task(root: Path, fault: str) -> str:
    """A tiny Decathlon task whose second training case has ``fault``; returns the broken file's name."""
    tiny_task(root)
    folder, breaker = DECATHLON_FAULTS[fault]
    path = sorted((root / folder).iterdir())[1]
    breaker(path)
    return path.name


# ------------------------------------------------------------------ predict inputs
def png16(path: Path, h: int = 36, w: int = 44) -> Path:
    """A 16-bit grayscale PNG (mode ``I;16``) using the whole 16-bit range."""
    values = np.random.default_rng(16).integers(0, 65536, (h, w), dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def predict_inputs_2d(folder: Path, good_source: Path) -> tuple[list[Path], dict[str, str]]:
    """Good and bad inputs for a 1-channel 2D model, in the order to pass them.

    Returns:
        ``(paths, bad)``: all paths, and ``{bad file name: a word its error must contain}``.
    """
    folder.mkdir(parents=True)
    image = Image.open(good_source)
    image.resize((44, 36)).save(folder / "scan_1.png")  # good; its name starts with the bad "scan" below
    png16(folder / "deep16.png")
    save(folder / "scan.png", np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    truncate(folder / "scan.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "page.png").write_text("<html><body>404 Not Found</body></html>\n")
    save(folder / "colour.png", rgb(3, 32, 32))
    image.save(folder / "scan_1.jpg")  # same stem as a good input: would overwrite its outputs
    bad = {"scan.png": "truncated", "empty.png": "0 bytes", "page.png": "cannot be opened as an image",
           "colour.png": "3 channel(s)", "scan_1.jpg": "would overwrite", "missing.png": "does not exist"}
    names = ["scan_1.png", "deep16.png", "scan.png", "empty.png", "page.png", "colour.png", "scan_1.jpg",
             "missing.png"]
    return [folder / n for n in names], bad


def predict_inputs_3d(folder: Path, good_source: Path) -> tuple[list[Path], dict[str, str]]:
    """Good and bad inputs for a 2-modality 3D model (see :func:`predict_inputs_2d`)."""
    folder.mkdir(parents=True)
    shutil.copy(good_source, folder / "vol_1.nii.gz")
    shutil.copy(good_source, folder / "vol.nii.gz")
    truncate(folder / "vol.nii.gz", 0.7)
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "page.nii.gz").write_text("<html><body>404 Not Found</body></html>\n")
    nifti(folder / "one.nii.gz", np.random.default_rng(0).standard_normal((20, 20, 12)).astype(np.float32))
    save(folder / "slice.png", np.zeros((8, 8), np.uint8))
    bad = {"vol.nii.gz": "cannot be loaded", "empty.nii.gz": "0 bytes", "page.nii.gz": "not a readable NIfTI",
           "one.nii.gz": "1 channel(s)", "slice.png": "2D image given to a 3D model",
           "missing.nii.gz": "does not exist"}
    names = ["vol_1.nii.gz", "vol.nii.gz", "empty.nii.gz", "page.nii.gz", "one.nii.gz", "slice.png",
             "missing.nii.gz"]
    return [folder / n for n in names], bad


def expected_outputs(stem: str, dims: int) -> set[str]:
    """Files ``predict`` writes for one good input of the tiny runs (binary 2D / 3-class 3D, both with UAFS)."""
    if dims == 2:
        return {f"{stem}_{k}.png" for k in ("mask", "prob", "uncertainty", "overlay")}
    return {f"{stem}_seg.nii.gz", f"{stem}_uncertainty.nii.gz"}


# ------------------------------------------------------------------ unwritable places
def unwritable_dir(tmp: Path) -> Path:
    """A folder path that cannot be created: inside a 0o500 folder, or (as root, where mode bits do not stop
    writes) under a regular file, which can never hold anything."""
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    probe = locked / "probe"
    try:
        probe.mkdir()
    except PermissionError:
        return locked / "out"
    probe.rmdir()
    locked.chmod(0o700)
    (tmp / "a_file").write_text("not a folder\n")
    return tmp / "a_file" / "out"


def tiny_datasets(root: Path) -> dict:
    """``{2: a grayscale folder dataset (32x32), 3: a 3-class 2-modality Decathlon task (48x48x32)}`` under
    ``root``."""
    return {2: gray_folder(root / "gray"), 3: tiny_task(root / "Task01", shape=(48, 48, 32))}


def tiny_runs(data: dict, root: Path) -> dict:
    """``{dims: a run trained one epoch on data[dims]}`` (train_argv's tiny settings) under ``root``."""
    for dims in (2, 3):
        result = run_cli(train_argv(dims, data[dims], root / f"run{dims}d"))
        assert result.code == 0, result.err
    return {dims: root / f"run{dims}d" for dims in (2, 3)}
