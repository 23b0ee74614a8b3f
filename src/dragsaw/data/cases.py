"""The unit every dataset adapter returns: one image, its mask file(s), and free-form metadata.

A :class:`Case` holds paths only; nothing is read until a dataset asks for the arrays. The same record serves 2D
adapters (one image file, one mask file) and volume loaders (one NIfTI image, one NIfTI label), so a 3D loader
can return ``Case`` objects too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dragsaw.errors import DataError

__all__ = ["Case"]


@dataclass(frozen=True)
class Case:
    """One image and its ground truth, as found on disk.

    Args:
        case_id: Identifier unique within a dataset (usually the image stem); used in ``splits.json``, result
            tables and prediction file names.
        image: Path of the image file.
        mask: Path of the mask file, or ``None`` for a negative case whose mask is empty (all background). Only
            adapters whose dataset has such cases (DigestPath) produce ``None``.
        extra: Free-form metadata. Keys with a meaning to readers:
            ``"masks"``: a tuple of several mask files whose foregrounds are merged (union) into one mask, e.g. the
            Montgomery left and right lung masks; when present it supersedes ``mask`` (which is then the first of
            them). ``"dataset"``: the adapter's name. Use :meth:`mask_files` rather than reading these directly.
    """

    case_id: str
    image: Path
    mask: Path | None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Normalise str paths so that comparisons and JSON round trips are stable.
        object.__setattr__(self, "image", Path(self.image))
        if self.mask is not None:
            object.__setattr__(self, "mask", Path(self.mask))
        if not isinstance(self.case_id, str) or not self.case_id:
            raise DataError(
                f"Case.case_id must be a non-empty string, got {self.case_id!r} for image {self.image}",
                fix="give every case a name (usually the image file stem)",
            )

    def mask_files(self) -> tuple[Path, ...]:
        """The mask files to read for this case, in order.

        Returns:
            ``extra["masks"]`` when present (their foregrounds are to be merged), else ``(mask,)``, else ``()`` for
            a negative case (empty mask).
        """
        merged = self.extra.get("masks")
        if merged:
            return tuple(Path(p) for p in merged)
        return () if self.mask is None else (self.mask,)

    @property
    def is_negative(self) -> bool:
        """True when the case has no mask file (its mask is all background)."""
        return not self.mask_files()
