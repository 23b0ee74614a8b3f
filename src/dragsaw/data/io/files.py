"""The first check of every file dragsaw reads: it exists, is a file and is not empty."""

from __future__ import annotations

from pathlib import Path

from dragsaw.errors import DataError

__all__ = ["require_file"]


def require_file(path: str | Path, what: str = "image", *, missing_fix: str = "check the dataset root and layout",
                 empty_fix: str = "re-download or re-export it") -> Path:
    """``path`` as a :class:`~pathlib.Path` once it is known to be a non-empty file.

    Args:
        path: the file.
        what: what the file is, for the message (``"image"``, ``"mask"``, ``"label"``, ...).
        missing_fix, empty_fix: the fix each message gives.

    Raises:
        DataError: naming ``what`` and ``path``: missing or not a file, or 0 bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist or is not a file", fix=missing_fix)
    if path.stat().st_size == 0:
        raise DataError(f"{what} file {path} is empty (0 bytes)", fix=empty_fix)
    return path
