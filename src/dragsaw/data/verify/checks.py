"""Dataset verification: every problem of a dataset as a list of findings, before any training starts.

:func:`verify_dataset` finds a dataset's cases with its adapter and :func:`verify_cases` checks each of them; no
bad file raises: each becomes a :class:`Problem` (``error``, ``warning`` or ``info``) naming the file, what is
wrong and how to fix it, collected in a :class:`VerifyReport` with summary counts.

2D files (PNG, JPEG, BMP, TIFF) are read with the same functions as training (:mod:`dragsaw.data.io.images`), so what
passes here also reads there. Volumes (NIfTI ``.nii``/``.nii.gz``, and with ``dragsaw[formats]`` NRRD, DICOM series
folders and MetaImage: :mod:`dragsaw.data.io.formats`) are checked from their headers (nibabel for NIfTI,
:func:`dragsaw.data.io.volumes.read_header` for the others, which also checks a DICOM folder's series and slice
spacing): image/label shape, affine (within 1e-3 of a voxel), non-finite voxels, label values and spacing outliers.

Two depths: ``quick=False`` decodes every file. ``quick=True`` (run before each training) reads only headers
(size, mode, channels, frames; file tails for truncation) plus the pixels of a seeded sample of at most
:data:`QUICK_SAMPLE` cases and of any file whose tail looks truncated.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dragsaw.data.adapters import find_cases
from dragsaw.data.cases import Case
from dragsaw.data.io.formats import is_volume
from dragsaw.data.io.labels import map_mask_values
from dragsaw.data.verify.files import FileScan
from dragsaw.data.verify.problems import Level, Problem, VerifyReport
from dragsaw.errors import ConfigError, DataError


__all__ = ["verify_cases", "verify_dataset", "QUICK_SAMPLE"]

QUICK_SAMPLE = 8
"""Number of cases whose pixels ``quick=True`` decodes (a seeded sample)."""

_SPACING_RATIO = 3.0
_CHUNK = 65536


def _dataset_checks(scan: FileScan, located: list[tuple[str, Case]]) -> None:
    """Dataset-level checks: channel consistency, spacing outliers, duplicated ids and image bytes."""
    if scan.channels:
        common, n_common = Counter(scan.channels.values()).most_common(1)[0]
        for path, n in scan.channels.items():
            if n != common:
                scan.add("error", path, f"image has {n} channel(s) but {n_common} of {len(scan.channels)} images "
                         f"have {common}", f"convert it so every image has {common} channel(s)", "channels")
    if len(scan.spacings) >= 3:
        median = np.median(np.array(list(scan.spacings.values())), axis=0)
        shown = tuple(round(float(m), 4) for m in median)
        for path, sp in scan.spacings.items():
            ratio = np.array(sp) / np.maximum(median, 1e-12)
            if (ratio > _SPACING_RATIO).any() or (ratio < 1 / _SPACING_RATIO).any():
                scan.add("warning", path, f"voxel spacing {tuple(round(s, 4) for s in sp)} is more than "
                         f"{_SPACING_RATIO:g}x away from the dataset median {shown}",
                         "check the header, or resample the volume to the common spacing", "spacing")
    first: dict[str, tuple[str, Case]] = {}
    by_size: dict[int, list[tuple[str, Case]]] = {}
    for split, case in located:
        if case.case_id in first:
            s0, c0 = first[case.case_id]
            scan.add("error", case.image, f"case id {case.case_id!r} is used twice: {c0.image} (split {s0!r}) "
                     f"and {case.image} (split {split!r})", "give every case a unique id (file name)", "dup_id")
        first.setdefault(case.case_id, (split, case))
        if case.image.is_file() and case.image.stat().st_size:
            by_size.setdefault(case.image.stat().st_size, []).append((split, case))
    # Identical files have identical sizes and ends: hash whole files only when size and ends collide.
    for group in (g for g in by_size.values() if len(g) > 1):
        ends = {c.image: _digest(c.image, whole=False) for _, c in group}
        tally = Counter(ends.values())
        seen: dict[str, tuple[str, Case]] = {}
        for split, case in group:
            whole = _digest(case.image, whole=True) if ends[case.image] and tally[ends[case.image]] > 1 else None
            if whole is None:
                continue
            if whole in seen:
                s0, c0 = seen[whole]
                level: Level = "error" if s0 != split else "warning"
                scan.add(level, case.image, f"same bytes as {c0.image} (cases {c0.case_id!r} in {s0!r} and "
                         f"{case.case_id!r} in {split!r})", "remove one copy: duplicates weigh twice in training "
                         "and leak into evaluation when they land in different splits", "dup_content")
            else:
                seen[whole] = (split, case)


def _digest(path: Path, whole: bool) -> str | None:
    """Hash of a file, or (cheaper) of its first and last 64 KiB; None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            if whole:
                data = fh.read()
            else:
                data = fh.read(_CHUNK)
                fh.seek(max(fh.tell(), path.stat().st_size - _CHUNK))
                data += fh.read()
    except OSError:  # unreadable files are reported by the file checks
        return None
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def verify_cases(
    cases_by_split: dict[str, list[Case]],
    *,
    num_classes: int,
    value_map: Mapping[int, int] | None = None,
    quick: bool = False,
    seed: int = 0,
) -> VerifyReport:
    """Check every case of a dataset; each bad file becomes a :class:`Problem`, nothing raises for it.

    Args:
        cases_by_split: ``{split: [Case, ...]}`` as the adapters return it; 2D and volume cases may be mixed.
        num_classes: K, background included (2 for binary).
        value_map: Optional {stored mask value: class index}, as in :func:`dragsaw.data.io.images.read_mask`.
        quick: Header checks for every case plus the pixels of a seeded sample of :data:`QUICK_SAMPLE` cases
            (and of files whose tail looks truncated); False decodes everything.
        seed: Seed of the quick-mode sample.

    Returns:
        The report; ``report.exit_code(strict)`` gives the command-line status.

    Raises:
        ConfigError: invalid ``num_classes``/``value_map`` or ``cases_by_split`` not a dict of Case lists.
    """
    map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)  # validates num_classes and value_map
    if not isinstance(cases_by_split, Mapping) or not all(
        isinstance(v, (list, tuple)) and all(isinstance(c, Case) for c in v) for v in cases_by_split.values()
    ):
        raise ConfigError("cases_by_split must be a dict {split: [Case, ...]} as returned by find_cases")
    located = [(split, case) for split, cases in cases_by_split.items() for case in cases]
    sample = set(random.Random(seed).sample(range(len(located)), min(QUICK_SAMPLE, len(located))))
    scan = FileScan(num_classes, value_map)
    for i, (_, case) in enumerate(located):
        decode = not quick or i in sample
        (scan.case3d if is_volume(case.image) else scan.case2d)(case, decode)
    _dataset_checks(scan, located)
    if not located:
        scan.add("error", "<dataset>", "the dataset holds no cases", "check the dataset root and layout", "empty")
    counts = {
        "check": "quick" if quick else "full",
        "cases": {split: len(cases) for split, cases in cases_by_split.items()},
        "images": len(scan.images),
        "images_read": len(scan.images - scan.unreadable),
        "masks": len(scan.masks),
        "masks_read": len(scan.masks - scan.unreadable),
        "decoded_cases": scan.decoded,
        "channels": dict(Counter(scan.channels.values())),
        "sizes": dict(scan.sizes),
        "empty_masks": scan.empty,
        "negative_cases": scan.negative,
    }
    return VerifyReport(scan.problems, counts)


def verify_dataset(
    name: str,
    root: str | Path,
    *,
    num_classes: int,
    value_map: Mapping[int, int] | None = None,
    quick: bool = False,
    seed: int = 0,
    **adapter_options,
) -> VerifyReport:
    """Find a dataset's cases with its adapter and verify them (see :func:`verify_cases`).

    A layout problem the adapter raises (missing or empty folder, orphan images or masks, ambiguous layout)
    becomes an error :class:`Problem` naming ``root`` (its text names the exact path); warnings the adapter
    issues (e.g. masks matched ignoring letter case) become warning problems.

    Args:
        name: Adapter name (see :data:`dragsaw.data.DATASETS`).
        root: The dataset folder.
        num_classes: K, background included.
        value_map: Optional {stored mask value: class index}.
        quick: Header checks plus a decoded sample (see :func:`verify_cases`).
        seed: Seed of the quick-mode sample.
        **adapter_options: Further adapter arguments (e.g. ``ph2_root``).

    Returns:
        The report.

    Raises:
        ConfigError: unknown dataset name, options the adapter does not take, invalid ``num_classes``/``value_map``.
    """
    map_mask_values(np.zeros(1, dtype=np.int64), num_classes, value_map)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cases = find_cases(name, root, **adapter_options)
        except DataError as exc:
            counts = {"check": "quick" if quick else "full", "cases": {}}
            return VerifyReport([Problem.from_error("error", root, exc, "layout")], counts)
    found = [Problem("warning", str(root), str(w.message), "rename or fix the files the message names", "layout")
             for w in caught if issubclass(w.category, UserWarning)]
    report = verify_cases(cases, num_classes=num_classes, value_map=value_map, quick=quick, seed=seed)
    report.problems[:0] = found
    return report
