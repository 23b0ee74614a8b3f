"""Runs that do not depend on the working directory, and that notice when their data moved or changed.

``train`` stores every path of ``config.yaml`` absolute (``data.root``, ``data.extra_root``, ``model.weights``) and
records the data in ``data.json``: the case ids of every split, the size of every image and mask file, and the
SHA-256 of a small, evenly spread sample of them (paths relative to the data roots, so a moved copy matches).
``evaluate`` (on the run's own data) and ``train --resume`` check the data against that record; when it moved,
``--set data.root=NEW`` points the run at the new place, and is accepted when the data there matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from .._atomic import write_json_atomic
from ..config import RunConfig
from ..errors import DataError

__all__ = ["DATA_RECORD", "absolute_paths", "data_fingerprint", "check_data", "record_data", "require_data_roots",
           "moved_data_hint"]

DATA_RECORD = "data.json"
SAMPLE_FILES = 8  # files whose content is hashed (spread evenly over the sorted file list)
_EXTRA = "<extra_root>/"


def _absolute(path: str | None) -> str | None:
    return None if not path else os.path.abspath(os.path.expanduser(str(path)))


def absolute_paths(config: RunConfig) -> RunConfig:
    """Make ``data.root``, ``data.extra_root`` and ``model.weights`` absolute (in place; also returned), so the
    saved run means the same data from any working directory."""
    config.data.root = _absolute(config.data.root)
    config.data.extra_root = _absolute(config.data.extra_root)
    config.model.weights = _absolute(config.model.weights)
    return config


def moved_data_hint(run_dir: str | Path) -> str:
    """The fix to print when a run's data is not where (or not what) the run recorded."""
    return (f"if the data moved, give its new location: `dragsaw evaluate {run_dir} --set data.root=NEW_PATH` or "
            f"`dragsaw train --resume {run_dir} --set data.root=NEW_PATH` (accepted when the data there matches "
            f"{Path(run_dir) / DATA_RECORD}); if the data changed on purpose, train a new run on it")


def require_data_roots(config: RunConfig, run_dir: str | Path) -> None:
    """Raise a DataError with the ``--set data.root=NEW`` hint when a data folder of the run does not exist."""
    for key in ("root", "extra_root"):
        value = getattr(config.data, key)
        if value and not Path(value).is_dir():
            raise DataError(
                f"the data of run {run_dir} is not at data.{key}={value} (no such folder: it was moved, renamed, or "
                "the run comes from another machine)",
                fix=moved_data_hint(run_dir).replace("data.root", f"data.{key}"),
            )


def _files(splits: dict, config: RunConfig) -> dict[str, Path]:
    """{key relative to the data roots: path} of every image and mask file of the splits."""
    roots = [("", Path(_absolute(config.data.root)))] if config.data.root else []
    if config.data.extra_root:
        roots.append((_EXTRA, Path(_absolute(config.data.extra_root))))
    files: dict[str, Path] = {}
    for cases in splits.values():
        for case in cases:
            for path in (case.image, *case.mask_files()):
                full = Path(os.path.abspath(path))
                key = full.as_posix()
                for prefix, root in roots:
                    if full.is_relative_to(root):
                        key = prefix + full.relative_to(root).as_posix()
                        break
                files[key] = full
    return dict(sorted(files.items()))


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def data_fingerprint(splits: dict, config: RunConfig) -> dict:
    """The record of a run's data: case ids per split, file sizes, and the SHA-256 of a sample of the files.

    Args:
        splits: ``{split: [Case]}`` as the data module resolved them.
        config: the run's configuration (its data roots make the file keys relative).
    """
    files = _files(splits, config)
    keys = list(files)
    step = max(1, math.ceil(len(keys) / SAMPLE_FILES))
    sample = keys[::step][:SAMPLE_FILES]
    return {
        "version": 1,
        "root": _absolute(config.data.root),
        "extra_root": _absolute(config.data.extra_root),
        "dataset": config.data.dataset,
        "splits": {name: sorted(c.case_id for c in cases) for name, cases in splits.items()},
        "sizes": {key: _size(path) for key, path in files.items()},
        "sha256": {key: _sha256(files[key]) for key in sample},
    }


def _differences(record: dict, splits: dict, config: RunConfig) -> list[str]:
    found = []
    now_ids = {name: {c.case_id for c in cases} for name, cases in splits.items()}
    for name in sorted(set(record.get("splits", {})) | set(now_ids)):
        then, now = set(record.get("splits", {}).get(name, [])), now_ids.get(name, set())
        if then - now:
            found.append(f"split {name!r} lacks case(s) {', '.join(sorted(then - now)[:5])}")
        if now - then:
            found.append(f"split {name!r} has new case(s) {', '.join(sorted(now - then)[:5])}")
    files = _files(splits, config)
    sizes = record.get("sizes", {})
    for key, size in sizes.items():
        now = _size(files[key]) if key in files else None
        if now is None:
            found.append(f"file {key} is missing")
        elif now != size:
            found.append(f"file {key} has {now} bytes, {size} when the run was trained")
    for key in files:
        if key not in sizes:
            found.append(f"file {key} is new")
    for key, digest in record.get("sha256", {}).items():
        if key in files and sizes.get(key) == _size(files[key]) and _sha256(files[key]) != digest:
            found.append(f"file {key} has other content (SHA-256) than when the run was trained")
    return found


def check_data(run_dir: str | Path, splits: dict, config: RunConfig) -> bool:
    """Compare the data of ``config`` with the run's ``data.json``; False when the run has no record (older runs).

    Raises:
        DataError: the data differs (names the first differences, the record and the ``--set data.root`` fix).
    """
    path = Path(run_dir) / DATA_RECORD
    if not path.is_file():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}, the record of the data run {run_dir} was trained on, cannot be read ({exc})",
            fix="restore it from a backup, or delete it to skip the check (at your own risk)",
        ) from exc
    found = _differences(record, splits, config)
    if found:
        more = f" (and {len(found) - 5} more differences)" if len(found) > 5 else ""
        raise DataError(
            f"the data at data.root={config.data.root} is not the data run {run_dir} was trained on (recorded in "
            f"{path}, from {record.get('root')}): {'; '.join(found[:5])}{more}",
            fix=moved_data_hint(run_dir),
        )
    return True


def record_data(run_dir: str | Path, splits: dict, config: RunConfig) -> None:
    """Write the run's ``data.json`` (atomically) for the data of ``config``."""
    write_json_atomic(data_fingerprint(splits, config), Path(run_dir) / DATA_RECORD)
