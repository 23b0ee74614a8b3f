"""Stored label values to class indices: the rules shared by image masks and label volumes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dragsaw._checks import is_int
from dragsaw.errors import ConfigError, DataError

__all__ = ["check_value_map", "format_values", "map_mask_values"]


def check_value_map(value_map: Mapping[int, int] | None, num_classes: int) -> dict[int, int] | None:
    """``value_map`` as ``{int: int}`` (None stays None) after checking it and ``num_classes`` (>= 2).

    Raises:
        ConfigError: a bad ``num_classes``, an empty map, or an entry that is not {stored int: class index}.
    """
    if not is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2 (background included), got {num_classes!r}")
    if value_map is None:
        return None
    if not isinstance(value_map, Mapping) or not value_map:
        raise ConfigError(f"value_map must be a non-empty mapping {{stored value: class index}}, got {value_map!r}")
    checked: dict[int, int] = {}
    for key, cls in value_map.items():
        ok_key = is_int(key, numpy=True)
        ok_cls = is_int(cls, numpy=True) and 0 <= cls < num_classes
        if not (ok_key and ok_cls):
            raise ConfigError(
                f"value_map entry {key!r}: {cls!r} is invalid; keys must be stored integer values and values class "
                f"indices in 0..{num_classes - 1} (num_classes={num_classes})"
            )
        checked[int(key)] = int(cls)
    return checked


def format_values(values: np.ndarray | list[int], limit: int = 10) -> str:
    """``{a, b, ...}`` with at most ``limit`` values shown (and the count when cut)."""
    values = [int(v) for v in values]
    text = ", ".join(str(v) for v in values[:limit])
    return "{" + text + (f", ... ({len(values)} in all)" if len(values) > limit else "") + "}"


def map_mask_values(
    values: np.ndarray, num_classes: int = 2, value_map: Mapping[int, int] | None = None, *, source: str | Path = "?"
) -> np.ndarray:
    """Map stored integer mask values to class indices (shared by 2D and volume readers).

    Without ``value_map``: a binary task (``num_classes == 2``) accepts values within {0, 1} or within {0, 255}
    (255 -> 1); a K-class task accepts values already in ``0..K-1``. With ``value_map`` every stored value must be a
    key of it.

    Args:
        values: Stored integer values, any shape ``[*S]``.
        num_classes: K, background included.
        value_map: Optional {stored value: class index}.
        source: File named in error messages.

    Returns:
        int64 array ``[*S]`` with values in ``0..K-1``.

    Raises:
        ConfigError: invalid ``num_classes`` or ``value_map``.
        DataError: a stored value is not accounted for (names the file, the values and the fix).
    """
    vmap = check_value_map(value_map, num_classes)
    values = np.asarray(values)
    present = np.unique(values)
    if vmap is not None:
        keys = np.array(sorted(vmap), dtype=np.int64)
        unexpected = np.setdiff1d(present, keys)
        if unexpected.size == 0:
            classes = np.array([vmap[int(k)] for k in keys], dtype=np.int64)
            return classes[np.searchsorted(keys, values)]
        expected, fix = keys, "add these values to value_map, or fix the mask file"
    elif num_classes == 2:
        candidates = [np.array([0, 1]), np.array([0, 255])]
        misses = [np.setdiff1d(present, c) for c in candidates]
        if misses[0].size == 0:
            return values.astype(np.int64)
        if misses[1].size == 0:
            return (values // 255).astype(np.int64)
        best = 0 if misses[0].size <= misses[1].size else 1
        expected, unexpected = candidates[best], misses[best]
        fix = "pass value_map={stored value: class index} or set num_classes to the number of classes"
    else:
        expected = np.arange(num_classes)
        unexpected = np.setdiff1d(present, expected)
        if unexpected.size == 0:
            return values.astype(np.int64)
        fix = "pass value_map={stored value: class index} (e.g. {0: 0, 128: 1, 255: 2}) or set num_classes"
    raise DataError(
        f"mask file {source} has values {format_values(unexpected)} not accounted for in a {num_classes}-class task "
        f"(expected values within {format_values(expected)}; values present: {format_values(present)})",
        fix=fix,
    )
