"""Argument checks and normalisation helpers, the one home of them for the core modules and the model library.

Importable with torch alone: the only dragsaw import is :mod:`dragsaw.errors`, which has no dependencies. The core
helpers raise ``ValueError``; the model-option checks (``check_choice``, ``check_int``, ``check_float``,
``check_int_tuple``, ``check_spatial_dims``) raise :class:`~dragsaw.errors.ConfigError` (a ``ValueError``) naming
the option, the bad value and the accepted values.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Sequence

import torch

from .errors import ConfigError

__all__ = [
    "SUPPORTED_DIMS",
    "as_axis_tuple",
    "check_choice",
    "check_float",
    "check_int",
    "check_int_labels",
    "check_int_tuple",
    "check_spatial_dims",
    "did_you_mean",
    "int_sequence",
    "is_int",
]

SUPPORTED_DIMS = (2, 3)
"""Spatial dimensions the model library (``dragsaw.models``) supports; the core blocks also take 1."""


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices`` to ``value``, or ``""`` when none is close (the one
    suggestion helper of every "unknown name" message)."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


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


def check_spatial_dims(spatial_dims: object, supported: Sequence[int] = (1, 2, 3)) -> int:
    """Return ``spatial_dims`` as an int if it is one of ``supported`` (the core blocks take 1, 2 or 3; the model
    library passes :data:`SUPPORTED_DIMS`, 2 or 3).

    Raises:
        ConfigError: (a ``ValueError``) naming the bad value and the supported ones, e.g.
            ``"spatial_dims must be 2 or 3, got 4."``.
    """
    if isinstance(spatial_dims, bool) or not is_int(spatial_dims, numpy=True) or spatial_dims not in supported:
        names = [str(d) for d in supported]
        allowed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise ConfigError(f"spatial_dims must be {allowed}, got {spatial_dims!r}.")
    return int(spatial_dims)  # type: ignore[arg-type]


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


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError listing them.

    Raises:
        ConfigError: naming ``name``, the bad value, the valid choices and the closest one.
    """
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"{name}={value!r} is not supported; choose one of {sorted(choices)}.{did_you_mean(value, choices)}"
        )
    return value


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) and at least ``minimum``.

    Raises:
        ConfigError: naming ``name`` and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}.")
    return value


def check_float(name: str, value: object, *, low: float, high: float | None = None, low_open: bool = False) -> float:
    """Return ``float(value)`` if it is a real number in ``[low, high]`` (``(low, high]`` when ``low_open``).

    Raises:
        ConfigError: naming ``name``, the bad value and the accepted range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    out = float(value)
    too_low = out <= low if low_open else out < low
    if too_low or (high is not None and out > high) or out != out:
        left = "(" if low_open else "["
        right = f"{high}]" if high is not None else "inf)"
        raise ConfigError(f"{name}={value!r} is outside {left}{low}, {right}.")
    return out


def check_int_tuple(
    name: str, value: object, *, length: int | None = None, minimum: int = 1, min_length: int = 1
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ints, each >= ``minimum``; an int is broadcast when ``length`` is given.

    Raises:
        ConfigError: naming ``name`` when the type, the length or a value does not fit.
    """
    if is_int(value) and length is not None:
        value = (value,) * length
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not all(is_int(v) for v in value)
    ):
        raise ConfigError(f"{name} must be a sequence of ints, got {value!r}.")
    out = tuple(int(v) for v in value)
    if length is not None and len(out) != length:
        raise ConfigError(f"{name}={out} must have exactly {length} entries (one per spatial axis), got {len(out)}.")
    if len(out) < min_length:
        raise ConfigError(f"{name}={out} must have at least {min_length} entries.")
    if out and min(out) < minimum:
        raise ConfigError(f"{name}={out}: every entry must be >= {minimum}.")
    return out
