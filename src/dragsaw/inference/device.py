"""Where and at which precision inference runs: ``--device`` and ``--precision``."""

from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError


__all__ = ["PRECISIONS", "DEVICE_CHOICES", "resolve_device", "autocast_dtype"]


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
"""Inference precisions (``--precision``): float32 throughout, or the network under ``torch.autocast`` in bfloat16 /
float16; the logits are cast to float32 before anything is computed from them (probabilities, metrics)."""

_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
"""The values :func:`resolve_device` (``--device``) takes."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(text: str | torch.device = "auto") -> torch.device:
    """The device that ``text`` (``--device``) names, checked against this machine.

    ``"auto"``: the current CUDA device when there is one, else Apple's MPS when available, else the CPU. ``"cpu"``,
    ``"cuda"`` (the current CUDA device), ``"cuda:N"`` and ``"mps"`` are taken when this machine has them; a
    :class:`torch.device` is checked the same way.

    Returns:
        a :class:`torch.device` (``cuda`` always with its index, e.g. ``cuda:0``).

    Raises:
        ConfigError: an unknown name (e.g. ``"tpu"``) or a device this machine lacks (e.g. ``"cuda:1"`` with one
            GPU: ``--device cuda:1 but this machine has 1 CUDA device(s) (cuda:0); use --device cpu or cuda:0``).
    """
    value = str(text).strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    kind, colon, index = value.partition(":")
    if kind == "cuda" and (not colon or index.isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"--device {value} but this machine has no CUDA device (torch.cuda.is_available() is False: no "
                f"NVIDIA GPU or driver, or a CPU-only PyTorch build, torch {torch.__version__}); use --device cpu "
                "(or --device auto, which takes the best device there is)"
            )
        number = int(index) if colon else torch.cuda.current_device()
        if number >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(f"--device {value} but this machine has {count} CUDA device(s) ({have}); use --device "
                              f"cpu or {'cuda:0' if count == 1 else 'one of ' + have}")
        return torch.device("cuda", number)
    if kind == "mps" and (not colon or index == "0"):
        if not _mps_available():
            raise ConfigError(f"--device {value} but Apple's MPS backend is not available on this machine (it needs an "
                              "Apple-silicon Mac and a PyTorch build with MPS); use --device cpu (or --device auto)")
        return torch.device("mps")
    raise ConfigError(f"--device {str(text)!r} is not a device dragsaw can use; use one of {DEVICE_CHOICES} (auto: "
                      "cuda if available, else mps, else cpu)")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype the network runs in under ``torch.autocast`` for ``precision`` on ``device``.

    ``"32-true"`` -> ``None`` (no autocast: float32), ``"bf16-mixed"`` -> ``torch.bfloat16``, ``"16-mixed"`` ->
    ``torch.float16``. Both mixed precisions work on CUDA (bfloat16 only where the GPU has it natively, Ampere and
    newer), on MPS and on the CPU (PyTorch's CPU autocast takes both; float16 there is correct but rarely faster).

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`, or ``device`` cannot run it (the message names
            both and the precision to use instead).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not an inference precision; use one of "
                          f"{', '.join(PRECISIONS)} (32-true: float32, the default)")
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if not native:
            raise ConfigError(f"--precision bf16-mixed but {device} ({torch.cuda.get_device_name(device)}) has no "
                              "native bfloat16 (it needs an Ampere or newer GPU); use --precision 16-mixed or 32-true")
    reason = None
    with warnings.catch_warnings(record=True) as caught:  # torch disables an unsupported autocast with a warning
        warnings.simplefilter("always")
        try:
            enabled = getattr(torch.autocast(device.type, dtype=dtype), "_enabled", True)
        except (RuntimeError, ValueError) as exc:
            enabled, reason = False, str(exc)
    if not enabled:
        reason = reason or "; ".join(str(w.message).replace("\n", " ") for w in caught) or "autocast is disabled"
        raise ConfigError(f"--precision {precision} is not supported on {device} by torch {torch.__version__} "
                          f"({reason}); use --precision 32-true" + (" or bf16-mixed" if dtype == torch.float16 else ""))
    return dtype
