"""Argument checks for the model constructors: each failure is a :class:`~dragsaw.errors.ConfigError` that names
the option, the bad value and the accepted values (with a close-match suggestion for names)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from .._checks import is_int
from ..errors import ConfigError

__all__ = [
    "SUPPORTED_DIMS",
    "check_choice",
    "check_float",
    "check_int",
    "check_int_tuple",
    "check_spatial_dims",
    "did_you_mean",
]

SUPPORTED_DIMS = (2, 3)


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices`` to ``value``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


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


def check_spatial_dims(spatial_dims: object) -> int:
    """Return ``spatial_dims`` if the model library supports it (2 or 3), else raise ConfigError."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SUPPORTED_DIMS:
        raise ConfigError(
            f"spatial_dims={spatial_dims!r} is not supported by the host networks; use 2 (images) or 3 (volumes)."
        )
    return int(spatial_dims)  # type: ignore[arg-type]
