"""Atomic outputs: a file or folder appears complete under its final name, or not at all.

Everything dragsaw writes (checkpoints, metrics, logs, plots, predictions, splits, synthetic datasets) goes
through a temporary name in the target's own folder and ``os.replace``, so a crash, a kill or a full disk never
leaves a truncated file behind, and an existing file stays intact until its replacement is whole.
"""

from __future__ import annotations

import json
import csv
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DataError

__all__ = [
    "atomic_file", "atomic_dir", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "write_csv_atomic",
    "sweep_temporaries", "current_umask",
]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask (e.g. ``0o022``), read without changing it where the OS allows.

    Linux exposes it in ``/proc/self/status``; elsewhere it is read by setting and restoring it (under a lock, so
    concurrent callers of this function never see each other's temporary value).
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _chmod_default(path: str | Path, directory: bool) -> None:
    """Give a ``mkstemp``/``mkdtemp`` temporary (created 0600/0700) the mode a plain ``open``/``mkdir`` would give:
    ``0666``/``0777`` less the umask, so outputs follow the user's umask like every other file they create."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


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
        _chmod_default(tmp, directory=False)  # mkstemp makes 0600; the final file follows the umask
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


def write_csv_atomic(rows: list[dict], fields: list[str], path: str | Path) -> Path:
    """Write ``rows`` (dicts) as a CSV with the header ``fields`` (keys outside it are left out), atomically."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


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
            "overwrite it",
            fix="choose a new output folder or delete this one",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _chmod_default(tmp, directory=True)  # mkdtemp makes 0700; the final folder follows the umask
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
