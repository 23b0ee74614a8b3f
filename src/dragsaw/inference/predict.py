"""``dragsaw predict``: files in, masks, probabilities and uncertainty maps out, with a manifest of what was written
so that a later ``--overwrite`` replaces only dragsaw's own unchanged files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .._atomic import write_json_atomic
from ..data.io.formats import is_volume
from ..errors import ConfigError, DataError, DragsawError
from ..plan import Plan
from ..uafs import UncertaintySelect
from .device import autocast_dtype, resolve_device
from .forward import InferenceSettings
from .outputs import Outputs, check_input_file, outputs_for
from .postprocess import check_postprocess


__all__ = ["PREDICT_MANIFEST", "read_predict_manifest", "predict_files"]


PREDICT_MANIFEST = ".dragsaw-predict.json"
"""The file in a ``predict`` output folder that lists the files dragsaw wrote there (name -> sha256, size, input);
only these, unchanged, may be replaced by a later ``predict --overwrite``."""


_INPUT_ERRORS = (DragsawError, OSError, ValueError, RuntimeError)
"""What a bad input raises: reported for that input, the others go on."""


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _PredictInputs(Dataset):
    """The inputs of :func:`predict_files`, checked and read (in DataLoader workers when ``num_workers > 0``).

    Item ``i`` is ``jobs[i]`` checked and read by the model's reader (``outputs.load``), or ``{"error": reason}``
    for a bad input, so that one bad file does not stop the loader.
    """

    def __init__(self, jobs: list[tuple[Path, str]], outputs: Outputs, reader, in_channels: int | None) -> None:
        self.jobs, self.outputs, self.reader, self.in_channels = jobs, outputs, reader, in_channels

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        path, _ = self.jobs[index]
        try:
            check_input_file(path)
            self.outputs.check_input(path, self.in_channels)
            return self.outputs.load(self.reader, path)
        except _INPUT_ERRORS as exc:
            return {"error": _reason(exc)}


def _as_is(item):
    """The DataLoader's per-item ``collate_fn``: items pass unchanged (no batching, no numpy-to-tensor)."""
    return item


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_predict_manifest(out_dir: str | Path) -> dict[str, dict]:
    """The files an earlier ``predict`` wrote into ``out_dir``: ``{name: {"sha256", "size", "input"}}`` ({} if none).

    Raises:
        DataError: the manifest exists but cannot be read (it is then not trusted: nothing there is replaced).
    """
    path = Path(out_dir) / PREDICT_MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise ValueError("'files' is not a mapping of file names to records")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}, the record of the files dragsaw predict wrote into {out_dir}, cannot be read ({exc}); without "
            "it no file there can be replaced safely", fix="choose another --out folder (or restore the file)"
        ) from exc
    return files


def _listing(paths: list, limit: int = 5) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_out_dir(out_dir: Path, inputs: list[Path], planned: dict[str, Path], overwrite: bool) -> dict[str, dict]:
    """Refuse (DataError) an ``out_dir`` where predicting could replace an input or a file dragsaw did not write.

    Without ``overwrite``: ``out_dir`` must hold none of the inputs and none of the ``planned`` output names. With
    ``overwrite``: only files listed, unchanged, in the manifest may be replaced, and never an input. Returns the
    manifest.
    """
    if not out_dir.is_dir():
        return {}
    here = out_dir.resolve()
    given = {p.resolve() for p in inputs if p.exists()} | {Path(os.path.abspath(p)) for p in inputs}
    inside = [p for p in inputs if p.exists() and p.resolve().parent == here]
    existing = [name for name in planned if os.path.lexists(out_dir / name)]
    flag = "--overwrite"
    if not overwrite:
        if inside or existing:
            what = []
            if inside:
                what.append(f"{len(inside)} of the input file(s) ({_listing(inside)})")
            if existing:
                what.append(f"{len(existing)} file(s) predict would write ({_listing([out_dir / n for n in existing])})")
            raise DataError(
                f"the output folder --out {out_dir} already holds {' and '.join(what)}; predict never replaces your "
                f"files", fix=f"choose another --out (a new or empty folder), or pass {flag} to replace the outputs "
                f"of an earlier dragsaw predict into this folder (recorded in {PREDICT_MANIFEST}; input files and "
                "files dragsaw did not write are never replaced)"
            )
        return read_predict_manifest(out_dir)
    manifest = read_predict_manifest(out_dir)
    clash = [out_dir / n for n in existing
             if (out_dir / n).resolve() in given or Path(os.path.abspath(out_dir / n)) in given]
    if clash:
        raise DataError(
            f"predicting into --out {out_dir} would replace the input file(s) {_listing(clash)} (e.g. the ground truth "
            f"case_mask.png next to case.png); inputs are never replaced, even with {flag}", fix="choose another --out "
            "folder, or rename the input files"
        )
    foreign = [out_dir / n for n in existing if n not in manifest]
    if foreign:
        raise DataError(
            f"--out {out_dir} holds {_listing(foreign)}, which predict would write but which dragsaw did not write "
            f"(they are not in {out_dir / PREDICT_MANIFEST}); {flag} replaces only earlier dragsaw outputs", fix="move "
            "those files away or choose another --out folder"
        )
    changed = [out_dir / n for n in existing
               if not (out_dir / n).is_file() or (out_dir / n).stat().st_size != manifest[n].get("size")
               or _sha256(out_dir / n) != manifest[n].get("sha256")]
    if changed:
        raise DataError(
            f"--out {out_dir} holds {_listing(changed)}, written by dragsaw predict but changed since (e.g. corrected "
            f"by hand); {flag} replaces only unchanged dragsaw outputs", fix="move those files away or choose another "
            "--out folder"
        )
    return manifest


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    config,
    *,
    device: torch.device | str = "cpu",
    probabilities: bool = False,
    in_channels: int | None = None,
    overwrite: bool = False,
    precision: str = "32-true",
    tta: bool | None = None,
    sw_batch_size: int | None = None,
    progress: bool = False,
    num_workers: int = 0,
    plan: Plan | None = None,
    postprocess: str = "none",
) -> tuple[list[Path], dict[str, str]]:
    """Predict every input with the run's configuration and plan and write the outputs to ``out_dir``.

    The inputs are preprocessed as the model's training data was: ``plan`` (the model's
    :class:`dragsaw.plan.Plan`, e.g. ``task.plan`` of :func:`dragsaw.engine.load_task`) gives the input size and
    normalisation (2D) or the target spacing, modalities and CT statistics (3D); ``None`` derives the plan from
    ``config`` alone (:meth:`dragsaw.plan.Plan.from_config`, for configurations that carry those values).
    ``in_channels`` None takes the plan's.

    2D images, per ``<stem>``: ``_mask.png`` (native size; {0,255} for binary, class indices otherwise),
    ``_prob.png`` (foreground probability; ``_probs.npy`` [K,H,W] for multi-class), ``_uncertainty.png`` (UAFS
    map, when the model has UAFS) and ``_overlay.png`` (a preview, subsampled to at most 2048 pixels on its long side). Volumes (``.nii``/``.nii.gz``; with
    ``dragsaw[formats]`` also NRRD and DICOM series folders, with ``dragsaw[itk]`` MetaImage, see :mod:`dragsaw.data.io.formats`):
    ``_seg.nii.gz`` in the input's geometry (same shape, and the input's affine in RAS), whatever the input's
    format, ``_uncertainty.nii.gz`` with UAFS, ``_probs.nii.gz`` (channels last) with ``probabilities``.

    Bad inputs do not stop the others: they are returned as ``{path: reason}`` and nothing is written for them
    (each input's outputs are made in a hidden folder inside ``out_dir`` and moved out only when all are complete).
    Two different inputs with the same stem (``a.png``, ``a.jpg``) would overwrite each other's outputs: the later
    one is reported as bad (the same file given twice is predicted once). With ``in_channels`` (the channels the
    model was trained on), an input with another channel count is reported before it reaches the network.

    Inputs are never modified. ``out_dir`` must not hold any input nor any file about to be written; with
    ``overwrite`` it may, but then only files an earlier call wrote there, unchanged, are replaced (they are listed
    in ``out_dir``/:data:`PREDICT_MANIFEST`, which every call updates atomically), and never an input.

    How: ``model`` is moved to ``device`` (a name or :class:`torch.device`, checked by :func:`resolve_device`:
    ``"auto"``, ``"cpu"``, ``"cuda:1"``, ...) and run at ``precision`` (one of :data:`PRECISIONS`); ``tta`` (None:
    the run's ``train.mirror``) averages over the flips of every spatial axis; ``sw_batch_size`` (None: the run's
    ``train.sw_batch_size``) is the number of windows per forward for volumes. With ``num_workers`` > 0 the inputs
    are checked and read in that many DataLoader worker processes, ahead of the network (up to ``2 * num_workers``
    inputs wait in memory); each input's outputs are written as soon as it is predicted, in input order.
    ``progress`` shows a bar of the inputs done on stderr.

    ``model`` may be an :class:`Ensemble`: the probabilities (and the uncertainty maps) written are the means of its
    members' (probabilities, not logits, are averaged); ``config`` / ``plan`` are then the first member's (see
    :func:`check_ensemble`). ``postprocess`` (one of :data:`POSTPROCESS`) is applied to the mask / segmentation
    in the input's geometry; the probability and uncertainty maps are not changed by it.

    Returns:
        ``(written_files, failures)``.

    Raises:
        ConfigError: ``device``, ``precision``, ``sw_batch_size`` or ``num_workers`` is not usable here (the message
            names the value and the fix); nothing is written then.
        DataError: ``out_dir`` holds inputs or files this call would write (see above); nothing is written then.
    """
    out_dir = Path(out_dir)
    device = resolve_device(device)
    if plan is None:
        plan = Plan.from_config(config, in_channels=in_channels)
    if in_channels is None:
        in_channels = plan.in_channels
    settings = InferenceSettings.from_config(config, mirror=tta, sw_batch_size=sw_batch_size, precision=precision,
                                             plan=plan)
    autocast_dtype(settings.precision, device)
    postprocess = check_postprocess(postprocess)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers!r} must be a whole number >= 0 (0: read the inputs in the main "
                          "process); use e.g. --num-workers 2")
    uncertainty = any(isinstance(m, UncertaintySelect) for m in model.modules())
    inputs = [Path(p) for p in inputs]
    failures: dict[str, str] = {}
    stems: dict[str, Path] = {}
    jobs: list[tuple[Path, str]] = []
    outputs = outputs_for(settings.spatial_dims)
    planned: dict[str, Path] = {}
    for path in inputs:
        stem = outputs.stem(path)
        if not outputs.accepts(path):
            given = "volume" if is_volume(path) else "2D image"
            failures[str(path)] = (f"a {given} given to a {settings.spatial_dims}D model; give {outputs.files}")
            continue
        if stem in stems:
            if stems[stem].resolve() != path.resolve():
                failures[str(path)] = (f"its outputs ({stem}_*) would overwrite those of {stems[stem]}; rename one "
                                       "of the two or predict them into separate --out folders")
            continue
        stems[stem] = path
        jobs.append((path, stem))
        for name in outputs.names(path, config.data.num_classes, uncertainty, probabilities):
            planned[name] = path
    manifest = _check_out_dir(out_dir, inputs, planned, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.to(device)
    model.eval()
    written: list[Path] = []
    recorded = len(written)
    last_record = time.monotonic()

    def record() -> None:  # the manifest lists every file written so far (at most once a second, and at the end)
        nonlocal recorded, last_record
        if len(written) == recorded:
            return
        write_json_atomic({"tool": "dragsaw predict", "version": 1, "files": manifest}, out_dir / PREDICT_MANIFEST)
        recorded, last_record = len(written), time.monotonic()

    loader = DataLoader(_PredictInputs(jobs, outputs, plan.reader(value_map=config.data.value_map), in_channels),
                        batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_is)
    bar = tqdm(total=len(jobs), desc="predict", unit="file", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for index, loaded in enumerate(loader):  # in input order; workers read ahead
            path, stem = jobs[index]
            if "error" in loaded:  # found while checking or reading it: nothing of it reached the network
                failures[str(path)] = loaded["error"]
                bar.set_postfix(failed=len(failures), refresh=False)
                bar.update(1)
                continue
            staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
            moved: list[Path] = []
            try:
                files = outputs.predict(model, loaded, path, staging, config, settings, device, probabilities,
                                        postprocess)
                entries = {file.name: {"sha256": _sha256(file), "size": file.stat().st_size,
                                       "input": os.path.abspath(path)} for file in files}
                for file in files:  # all outputs of this input are complete: move them out together
                    os.replace(file, out_dir / file.name)
                    moved.append(out_dir / file.name)
                manifest.update(entries)
                written += moved
                if time.monotonic() - last_record > 1.0:
                    record()
            except _INPUT_ERRORS as exc:
                for file in moved:
                    file.unlink(missing_ok=True)  # no partial set of outputs for this input
                failures[str(path)] = _reason(exc)
                bar.set_postfix(failed=len(failures), refresh=False)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
        record()
    return written, failures
