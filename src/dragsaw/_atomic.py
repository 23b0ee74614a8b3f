"""Atomic outputs: a file or folder appears complete under its final name, or not at all.

Everything dragsaw writes (checkpoints, metrics, logs, plots, predictions, splits, synthetic datasets) goes
through a temporary name in the target's own folder and ``os.replace``, so a crash, a kill or a full disk never
leaves a truncated file behind, and an existing file stays intact until its replacement is whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

__all__ = [
    "atomic_file", "atomic_dir", "write_bytes_atomic", "write_text_atomic", "write_json_atomic",
    "sweep_temporaries",
]


@contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds, delete it if not.

    ``suffix`` ends the temporary name (writers that pick a format from the name, e.g. ``.tmp.nii.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(payload, path: str | Path) -> Path:
    """Write ``payload`` as indented JSON atomically (numpy scalars become floats)."""
    return write_text_atomic(json.dumps(payload, indent=2, default=float) + "\n", path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it becomes ``path`` when the block succeeds.

    Raises:
        DataError: ``path`` exists and is a file or a non-empty folder (nothing is overwritten).
    """
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} already exists and is {'a file' if not out.is_dir() else 'a non-empty folder'}; refusing to "
            "overwrite it; fix: choose a new output folder or delete this one"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.replace cannot replace a directory on every platform
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sweep_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries a killed process left under ``folder`` (recursively); return what was removed.

    A SIGKILL or power loss cannot run the clean-up of :func:`atomic_file` / :func:`atomic_dir`, so a
    ``.<name>.<random>.tmp`` file or folder can stay behind. Only names of that exact pattern are touched; the
    completed files they were meant to replace are never affected. Call it before resuming into ``folder``.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.rglob(".*.tmp*"), key=lambda p: len(p.parts), reverse=True):
        if path.name.count(".") < 3:  # ".<name>.<random>.tmp" has at least three dots; ".hidden.tmp" is not ours
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
