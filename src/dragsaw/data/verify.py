"""Dataset verification: every problem of a dataset as a list of findings, before any training starts.

:func:`verify_dataset` finds a dataset's cases with its adapter and :func:`verify_cases` checks each of them; no
bad file raises: each becomes a :class:`Problem` (``error``, ``warning`` or ``info``) naming the file, what is
wrong and how to fix it, collected in a :class:`VerifyReport` with summary counts.

2D files (PNG, JPEG, BMP, TIFF) are read with the same functions as training (:mod:`dragsaw.data.io2d`), so what
passes here also reads there. Volumes (``.nii``/``.nii.gz``) are checked with nibabel: header, image/label shape,
affine (within 1e-3 of a voxel), non-finite voxels, label values and spacing outliers.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from dragsaw.data.cases import Case
from dragsaw.data.io2d import map_mask_values
from dragsaw.errors import ConfigError, DataError

if TYPE_CHECKING:
    from dragsaw.data.verify_files import FileScan

__all__ = ["Problem", "VerifyReport", "verify_cases", "verify_dataset", "QUICK_SAMPLE"]

QUICK_SAMPLE = 8
"""Number of cases whose pixels ``quick=True`` decodes (a seeded sample)."""

Level = Literal["error", "warning", "info"]
_LEVELS = ("error", "warning", "info")
_SPACING_RATIO = 3.0
_CHUNK = 65536


@dataclass(frozen=True)
class Problem:
    """One finding about one file (or folder).

    Args:
        level: ``"error"`` (training would fail or learn from wrong data), ``"warning"`` (suspicious, usable) or
            ``"info"`` (worth knowing, fine).
        file: The file or folder concerned.
        what: What is wrong, with the offending values.
        fix: How to fix it.
        kind: Short tag grouping findings of one sort (``"unreadable"``, ``"empty_mask"``, ...).
    """

    level: Level
    file: str
    what: str
    fix: str
    kind: str = "other"

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise ValueError(f"Problem.level must be one of {_LEVELS}, got {self.level!r}")

    @classmethod
    def from_error(cls, level: Level, file: Path | str, exc: Exception, kind: str, prefix: str = "") -> Problem:
        """A finding from an exception whose message reads ``'what; fix: how'`` (as DataError messages do)."""
        what, sep, fix = str(exc).rpartition("; fix: ")
        return cls(level, str(file), prefix + (what if sep else str(exc)), fix if sep else "see the message", kind)

    def line(self) -> str:
        """``LEVEL file: what -- fix``."""
        return f"{self.level.upper()} {self.file}: {self.what} -- {self.fix}"


@dataclass
class VerifyReport:
    """Findings and summary counts of one verification.

    Args:
        problems: The findings, in the order found.
        counts: ``check`` ("full"/"quick"), ``cases`` {split: n}, ``images``/``images_read``, ``masks``/``masks_read``
            (files, and those read without error), ``decoded_cases``, ``channels`` {C: images}, ``sizes``
            {"HxW" or "XxYxZ": images}, ``empty_masks`` (among decoded cases), ``negative_cases`` (no mask file).
    """

    problems: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def of_level(self, level: Level) -> list[Problem]:
        """The problems of one level."""
        return [p for p in self.problems if p.level == level]

    @property
    def worst(self) -> str:
        """``"error"``, ``"warning"``, ``"info"`` or ``"ok"`` (no finding at all)."""
        return next((lvl for lvl in _LEVELS if self.of_level(lvl)), "ok")

    def exit_code(self, strict: bool = False) -> int:
        """2 with any error; 1 with warnings and ``strict``; else 0."""
        if self.of_level("error"):
            return 2
        return 1 if strict and self.of_level("warning") else 0

    def format(self, max_per_kind: int | None = 20) -> str:
        """Summary table, then one ``LEVEL file: what -- fix`` line per problem (errors first).

        Args:
            max_per_kind: Lines shown per (level, kind) before the rest are summarised in one line; None: all.
        """
        c = self.counts
        cases = c.get("cases", {})
        depth = "quick: headers + a sample decoded" if c.get("check") == "quick" else "full: every file decoded"
        out = [f"dataset check ({depth})", f"{'split':<8}{'cases':>7}"]
        out += [f"{s:<8}{n:>7}" for s, n in cases.items()] + [f"{'total':<8}{sum(cases.values()):>7}"]
        out.append(
            f"images read: {c.get('images_read', 0)} of {c.get('images', 0)}; masks read: {c.get('masks_read', 0)} "
            f"of {c.get('masks', 0)}; cases decoded: {c.get('decoded_cases', 0)}"
        )
        out.append("channels: " + _tally(c.get("channels", {}), "image"))
        out.append("sizes: " + _tally(c.get("sizes", {}), "image", limit=6))
        out.append(
            f"empty masks: {c.get('empty_masks', 0)} of {c.get('decoded_cases', 0)} decoded cases; "
            f"negative cases (no mask file): {c.get('negative_cases', 0)}"
        )
        n = {lvl: len(self.of_level(lvl)) for lvl in _LEVELS}
        out.append(f"problems: {n['error']} error(s), {n['warning']} warning(s), {n['info']} info")
        for lvl in _LEVELS:
            shown: Counter = Counter()
            group = self.of_level(lvl)
            for p in group:
                shown[p.kind] += 1
                if max_per_kind is None or shown[p.kind] <= max_per_kind:
                    out.append(p.line())
            for kind, total in shown.items():
                if max_per_kind is not None and total > max_per_kind:
                    out.append(f"{lvl.upper()} ... {total - max_per_kind} more {kind!r} problem(s) not shown")
        return "\n".join(out)


def _tally(counter: Mapping, noun: str, limit: int = 10) -> str:
    if not counter:
        return "none"
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{k} ({v} {noun}{'s' if v != 1 else ''})" for k, v in items[:limit])
    return text + (f", ... {len(items) - limit} more" if len(items) > limit else "")


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


def _is_volume(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


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
        cases_by_split: ``{split: [Case, ...]}`` as the adapters return it; 2D and NIfTI cases may be mixed.
        num_classes: K, background included (2 for binary).
        value_map: Optional {stored mask value: class index}, as in :func:`dragsaw.data.io2d.read_mask`.
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
    from dragsaw.data.verify_files import FileScan  # late: it imports Problem from here

    scan = FileScan(num_classes, value_map)
    for i, (_, case) in enumerate(located):
        decode = not quick or i in sample
        (scan.case3d if _is_volume(case.image) else scan.case2d)(case, decode)
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
    from dragsaw.data import find_cases  # late: dragsaw.data may import this module

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
