"""Medical Segmentation Decathlon task folders (and the nnU-Net raw layout), and their dataset properties.

Layout read by :func:`decathlon` (``root`` is one task folder, e.g. ``Task02_Heart``)::

    dataset.json    "modality" (or nnU-Net v2 "channel_names") {"0": "MRI", ...}, "labels", "training", "test"
    imagesTr/       <case>.nii.gz: 3D (one modality) or 4D with the modalities on the 4th axis (MSD), or
                    <case>_0000.nii.gz, <case>_0001.nii.gz, ...: one 3D file per channel (nnU-Net raw)
    labelsTr/       <case>.nii.gz: 3D class indices
    imagesTs/       test images, listed in "test"
    labelsTs/       optional test labels (the official MSD publishes none; dragsaw's synthetic set has them)

Rules: the training cases are the entries of ``"training"`` (nnU-Net v2 omits the list: then they are the files of
``labelsTr``). Hidden files (names starting with ``.``, e.g. macOS ``._*`` resource forks) are ignored. Every image
file in ``imagesTr`` and every label in ``labelsTr`` must belong to a listed case. Test cases form a ``"test"``
split only when ``labelsTs/`` exists (each listed test image then needs its label); otherwise they are left out
with a warning and :func:`~dragsaw.data.splits.resolve_splits` carves a seeded test split from the training cases.
Only headers are read here (to check channel counts and shapes), never voxel data.

Volumes may be NIfTI (``.nii.gz``, ``.nii``) or, with ``pip install 'dragsaw[formats]'``, NRRD (``.nrrd``,
``.nhdr``) or DICOM series (one folder of ``.dcm`` files per volume, named like the case, e.g. ``imagesTr/case_001/``; with
``dragsaw[itk]`` also MetaImage, ``.mha``, ``.mhd``); dataset.json lists them by those names (:mod:`dragsaw.data.io.formats`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from dragsaw._checks import is_int
from dragsaw.data.adapters.registry import CasesBySplit, register_dataset
from dragsaw.data.cases import Case
from dragsaw.data.io.formats import is_dicom_folder, supported_volumes, volume_stem
from dragsaw.data.io.volumes import check_case_geometry
from dragsaw.errors import ConfigError, DataError

__all__ = ["decathlon", "dataset_properties", "ANISOTROPY_RATIO"]

ANISOTROPY_RATIO = 3.0
"""An axis is "strongly anisotropic" when its median spacing exceeds this many times every other axis' (nnU-Net)."""

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
_FIX = "check the task folder (dataset.json, imagesTr/, labelsTr/) and that the archive was fully extracted"


def _load_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; expected a Decathlon/nnU-Net task folder with dataset.json, imagesTr/ and "
            f"labelsTr/ at {root}",
            fix=_FIX,
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})", fix="repair or re-download it") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path} must hold a JSON object, got {type(meta).__name__}", fix="repair or re-download it")
    return meta


def _index_dict(value: Any, key: str, path: Path) -> tuple[str, ...]:
    """``{"0": a, "1": b}`` -> ``(a, b)``; the keys must be exactly 0..n-1."""
    try:
        items = {int(k): str(v) for k, v in value.items()}
    except (AttributeError, TypeError, ValueError):
        items = {}
    if not items or sorted(items) != list(range(len(items))):
        raise DataError(
            f"{key!r} must map the indices 0..n-1 to names (e.g. {{\"0\": \"MRI\"}}), got {value!r}",
            where=path,
            fix="repair dataset.json",
        )
    return tuple(items[i] for i in range(len(items)))


def _labels(meta: dict, path: Path) -> tuple[str, ...]:
    labels = meta.get("labels")
    if isinstance(labels, dict) and labels and all(is_int(v) for v in labels.values()):  # nnU-Net v2: {"background": 0}
        labels = {str(v): k for k, v in labels.items()}
    return _index_dict(labels, "labels", path)


def _visible_volumes(folder: Path) -> dict[str, Path]:
    """{name: path} of the visible volumes in ``folder``: files of a volume format, DICOM series folders (empty
    when ``folder`` does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir()
            if (p.is_file() or is_dicom_folder(p)) and not p.name.startswith(".") and volume_stem(p)}


def _rel(root: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(
            f"{what} entry {value!r} is not a file path", where=root / "dataset.json", fix="repair dataset.json"
        )
    return root / value.removeprefix("./")


def _channel_files(image: Path, n_modalities: int, case_id: str, listing: dict[str, Path]) -> tuple[Path, ...]:
    """nnU-Net raw channel files of ``image`` (``<case>_0000<suffix>``, ``_0001`` ...); () when there are none."""
    suffix = image.name[len(volume_stem(image) or "") :]
    found = {}
    for name, path in listing.items():
        m = _CHANNEL.match(volume_stem(path) or "")
        if m and m["case"] == case_id and name.endswith(suffix):
            found[int(m["index"])] = path
    if found and sorted(found) != list(range(n_modalities)):
        raise DataError(
            f"case {case_id!r} has channel files {sorted(p.name for p in found.values())} in {image.parent} but "
            f"dataset.json declares {n_modalities} modalities (expected {case_id}_0000 .. "
            f"{case_id}_{n_modalities - 1:04d})",
            fix="provide exactly one file per modality",
        )
    return tuple(found[i] for i in sorted(found))


def _case(
    root: Path, image: Path, label: Path | None, extra: dict, listing: dict[str, Path], used: set[Path]
) -> tuple[Case, str]:
    case_id = volume_stem(image)
    if case_id is None:
        raise DataError(f"{root / 'dataset.json'} lists {image}, which is not a NIfTI file nor another volume format "
                        f"dragsaw reads ({supported_volumes()})", fix="repair dataset.json")
    if label is not None and not label.is_file():
        raise DataError(f"case {case_id!r}: its label {label} does not exist", fix=_FIX)
    n = len(extra["modalities"])
    if image.is_file() or is_dicom_folder(image):
        case, layout = Case(case_id, image, label, {**extra, "layout": "msd"}), "msd"
        used.add(image)
    else:
        channels = _channel_files(image, n, case_id, listing) if image.parent.is_dir() else ()
        if not channels:
            raise DataError(
                f"case {case_id!r} is listed in dataset.json but neither {image} (Decathlon layout) nor "
                f"{image.parent / (case_id + '_0000' + image.name[len(case_id):])} ... (nnU-Net layout) exists",
                fix=_FIX,
            )
        case = Case(case_id, channels[0], label, {**extra, "layout": "nnunet", "channels": channels})
        layout = "nnunet"
        used.update(channels)
    check_case_geometry(case, channels=n)
    return case, layout


def _orphans(folder: Path, listing: dict[str, Path], used: set[Path], what: str) -> None:
    orphans = sorted(name for name, p in listing.items() if p not in used)
    if orphans:
        shown = ", ".join(orphans[:10]) + (f", ... ({len(orphans)} in all)" if len(orphans) > 10 else "")
        raise DataError(
            f"{folder} holds {len(orphans)} {what} file(s) that no case of dataset.json uses: {shown}",
            fix="list their cases in dataset.json or move the files out of the task folder",
        )


def _training_entries(meta: dict, root: Path) -> list[tuple[Path, Path]]:
    entries = meta.get("training")
    if entries is None:  # nnU-Net v2: no list, the cases are the label files
        labels = _visible_volumes(root / "labelsTr")
        ending = meta.get("file_ending", ".nii.gz")
        return [(root / "imagesTr" / (volume_stem(p) + ending), p) for n, p in sorted(labels.items())]  # type: ignore
    if not isinstance(entries, list):
        raise DataError(f"{root / 'dataset.json'}: 'training' must be a list, got {type(entries).__name__}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(
                f"training entry {entry!r} must be {{\"image\": ..., \"label\": ...}}",
                where=root / "dataset.json",
                fix="repair dataset.json",
            )
        image = _rel(root, entry["image"], "training image")
        if not image.name.startswith("._"):
            out.append((image, _rel(root, entry["label"], "training label")))
    return out


def _unique(cases: list[Case], layouts: set[str], where: Path) -> list[Case]:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise DataError(f"case {case.case_id!r} is listed twice", where=where, fix="repair dataset.json")
        seen[case.case_id] = case
    if len(layouts) > 1:
        raise DataError(
            "some cases are single files (Decathlon layout) and others per-channel files (nnU-Net layout)",
            where=where,
            fix="convert the task folder to one layout",
        )
    return sorted(cases, key=lambda c: c.case_id)


@register_dataset("decathlon")
def decathlon(root: str | Path) -> CasesBySplit:
    """Cases of a Medical Segmentation Decathlon task folder (or an nnU-Net raw dataset folder).

    Every case carries ``extra = {"dataset": "decathlon", "layout": "msd" | "nnunet", "modalities": (names...),
    "labels": (class names...)}`` plus, for the nnU-Net layout, ``"channels"``: its per-channel files in order
    (``case.image`` is then the first of them).

    Args:
        root: The task folder holding ``dataset.json``.

    Returns:
        ``{"train": [...]}`` plus ``"test"`` when ``labelsTs/`` holds the test labels (see the module rules).

    Raises:
        DataError: missing dataset.json or folders, malformed dataset.json, a listed case or label that is
            missing, image/label files that no case uses, channel counts or shapes that disagree with the declared
            modalities, duplicate cases, or mixed layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder {root} does not exist; expected a Decathlon task folder (dataset.json, imagesTr/, "
                        "labelsTr/)", fix=_FIX)  # fmt: skip
    meta = _load_json(root)
    json_path = root / "dataset.json"
    modality = meta.get("modality", meta.get("channel_names"))
    extra = {"dataset": "decathlon", "modalities": _index_dict(modality, "modality", json_path),
             "labels": _labels(meta, json_path)}  # fmt: skip
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            raise DataError(f"folder {root / sub} does not exist; expected the training {sub[:-2]} there", fix=_FIX)
    images, labels = _visible_volumes(root / "imagesTr"), _visible_volumes(root / "labelsTr")
    used: set[Path] = set()
    train, layouts = [], set()
    for image, label in _training_entries(meta, root):
        case, layout = _case(root, image, label, extra, images, used)
        train.append(case)
        layouts.add(layout)
        used.add(label)
    if not train:
        raise DataError(f"{json_path} lists no training cases and {root / 'labelsTr'} holds none", fix=_FIX)
    _orphans(root / "imagesTr", images, used, "image")
    _orphans(root / "labelsTr", labels, used, "label")
    result = {"train": _unique(train, layouts, json_path)}

    tests = [_rel(root, t.get("image") if isinstance(t, dict) else t, "test") for t in meta.get("test") or []]
    tests = [t for t in tests if not t.name.startswith("._")]
    if tests and not (root / "labelsTs").is_dir():
        warnings.warn(
            f"{len(tests)} test image(s) of {json_path} have no labels ({root / 'labelsTs'} does not exist; the "
            "official MSD publishes none); they are left out, and a test split is carved from the training cases",
            UserWarning,
            stacklevel=2,
        )
    elif tests:
        ts_images, ts_labels = _visible_volumes(root / "imagesTs"), _visible_volumes(root / "labelsTs")
        used_ts: set[Path] = set()
        cases = []
        for image in tests:
            label = root / "labelsTs" / image.name
            case, layout = _case(root, image, label, extra, ts_images, used_ts)
            cases.append(case)
            layouts.add(layout)
            used_ts.add(label)
        _orphans(root / "labelsTs", ts_labels, used_ts, "label")
        result["test"] = _unique(cases, layouts, json_path)
    return result


def _target_spacing(spacings: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The target spacing rule of :func:`dataset_properties`; returns (target, anisotropic axis or None)."""
    target = np.median(spacings, axis=0)
    coarse = int(np.argmax(target))
    others = np.delete(target, coarse)
    if target[coarse] > ANISOTROPY_RATIO * others.max():
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), float(others.max()))
        return target, coarse
    return target, None


def dataset_properties(cases: Sequence[Case], *, modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Spacing and shape statistics from the volumes' headers (no voxel data), and the target spacing.

    Spacings and shapes are given along the RAS axes that preprocessing reorients to (``"spacing"``, ``"shape"``)
    and in the file's own axis order (``"spacing_file"``, ``"shape_file"``).

    Target spacing rule (nnU-Net's, simplified): the per-axis median spacing over the cases; but when the
    coarsest axis' median exceeds :data:`ANISOTROPY_RATIO` (3) times the largest median of the other axes
    (strongly anisotropic data, e.g. thick slices), that axis takes the 10th percentile of its spacings instead
    (finer, to keep more slices), never finer than the other axes. nnU-Net also requires the coarse axis to have
    few voxels; that condition is left out.

    Args:
        cases: Volume cases (e.g. the training cases of :func:`decathlon`).
        modalities: Channel names; None takes ``case.extra["modalities"]`` (which must then agree across cases).

    Returns:
        ``{"num_cases", "modalities", "cases": {case_id: {"spacing", "shape", "spacing_file", "shape_file"}},
        "median_spacing", "median_shape", "median_shape_resampled" (median shape at the target spacing),
        "target_spacing", "anisotropic_axis" (int or None), "axes": "RAS", "spacing_rule": str}``; lists of
        floats/ints, JSON-serialisable.

    Raises:
        ConfigError: no cases.
        DataError: unreadable headers, disagreeing modality lists or channel counts.
    """
    cases = list(cases)
    if not cases:
        raise ConfigError("dataset_properties needs at least one case, got none")
    if modalities is None:
        found = {tuple(c.extra.get("modalities") or ()) for c in cases}
        if len(found) != 1:
            raise DataError(f"the cases declare different modality lists {sorted(found)}; pass modalities=[...]")
        modalities = found.pop() or None
    names = None if modalities is None else [str(m) for m in modalities]
    per_case: dict[str, dict[str, list]] = {}
    spacings, shapes = [], []
    for case in cases:
        head = check_case_geometry(case, channels=None if names is None else len(names))
        axes = nib.io_orientation(head.affine)[:, 0].astype(int)  # file axis i -> RAS axis axes[i]
        spacing, shape = np.empty(3), np.empty(3, dtype=int)
        spacing[axes], shape[axes] = head.spacing, head.shape
        spacings.append(spacing)
        shapes.append(shape)
        per_case[case.case_id] = {"spacing": spacing.tolist(), "shape": shape.tolist(),
                                  "spacing_file": list(head.spacing), "shape_file": list(head.shape)}  # fmt: skip
    spacing_arr, shape_arr = np.array(spacings), np.array(shapes)
    target, aniso = _target_spacing(spacing_arr)
    resampled = np.rint(shape_arr * spacing_arr / target).astype(int)
    return {
        "num_cases": len(cases),
        "modalities": names,
        "cases": per_case,
        "median_spacing": np.median(spacing_arr, axis=0).tolist(),
        "median_shape": np.median(shape_arr, axis=0).tolist(),
        "median_shape_resampled": np.median(resampled, axis=0).tolist(),
        "target_spacing": target.tolist(),
        "anisotropic_axis": aniso,
        "axes": "RAS",
        "spacing_rule": (
            "median spacing per axis; an axis whose median exceeds "
            f"{ANISOTROPY_RATIO:g}x every other axis' takes the 10th percentile of its spacings (not below the "
            "other axes')"
        ),
    }
