"""Small argument-normalisation helpers shared by the core modules (torch only)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["as_axis_tuple", "check_spatial_dims", "check_int_labels", "int_sequence", "is_int"]


def is_int(value: object, *, numpy: bool = False) -> bool:
    """True for a Python int (with ``numpy=True`` also a NumPy integer), never for a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) if numpy else isinstance(value, int)


def int_sequence(value: object, length: int, *, minimum: int = 1) -> tuple[int, ...] | None:
    """``value`` as a tuple of ``length`` ints (Python or NumPy), each >= ``minimum``; ``None`` if it is not one."""
    if not isinstance(value, Sequence) or len(value) != length:
        return None
    if not all(is_int(v, numpy=True) and v >= minimum for v in value):
        return None
    return tuple(int(v) for v in value)


def as_axis_tuple(value: int | Sequence[int], ndim: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """Broadcast an int or per-axis sequence to a tuple of ``ndim`` ints, each >= ``minimum``.

    Raises:
        ValueError: naming ``name`` when the length or a value does not fit.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got the bool {value!r}.")
    if isinstance(value, int):
        out = (value,) * ndim
    elif isinstance(value, Sequence) and all(is_int(v) for v in value):
        out = tuple(int(v) for v in value)
        if len(out) != ndim:
            raise ValueError(
                f"{name}={tuple(value)} has {len(out)} entries but the data has {ndim} spatial axes; "
                f"give one int for all axes or exactly {ndim} values."
            )
    else:
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}.")
    if min(out) < minimum:
        raise ValueError(f"{name}={out} must be >= {minimum} on every axis.")
    return out


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 1, 2 or 3, else raise ValueError."""
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
    return spatial_dims


def check_int_labels(
    labels: torch.Tensor, num_classes: int, ignore_index: int | None, name: str = "labels"
) -> torch.Tensor:
    """Check an integer label map: dtype integral and every value in [0, num_classes) or ``ignore_index``.

    Returns:
        the labels as int64 (compared after widening, so e.g. a uint8 255 never aliases ``ignore_index=-1``).

    Raises:
        ValueError: for float labels (with the fix: ``.long()`` after rounding) or out-of-range values (listing
            a few of them and the expected range).
    """
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer class indices, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} has dtype {labels.dtype}; class indices must be an integer tensor. If these are class "
            f"indices stored as floats, pass {name}.round().long(); if they are one-hot, pass {name}.argmax(1)."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    labels = labels.long()
    if labels.numel() == 0:
        return labels
    low, high = torch.aminmax(labels)
    if low >= 0 and high < num_classes:  # the common case: one pass over the labels
        return labels
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:8].tolist()
        allowed = f"0..{num_classes - 1}" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(
            f"{name} holds values {values} outside {allowed}. Map them to class indices first (e.g. a {{0, 255}} "
            f"mask to {{0, 1}}), raise num_classes, or set ignore_index."
        )
    return labels
