"""Pretrained backbone weights from a local file (never a download), with key-layout remapping.

A backbone that supports an external layout (the ImageNet Xception of Cadene's ``pretrainedmodels`` or a
torchvision ResNet) publishes ``external_layout`` (its name), ``external_ignore`` (classifier key prefixes of that
layout) and ``external_key_pairs()``: ``(source prefix, target prefix)`` pairs of leaf modules. A source prefix may
feed several targets; target leaves without a pair keep their initialisation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .._checks import check_choice

__all__ = ["LAYOUTS", "load_backbone_weights", "read_state_dict", "remap_state_dict"]

LAYOUTS = ("auto", "dragsaw", "cadene", "torchvision")
_SHOW = 5  # keys listed per kind of mismatch


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{key: tensor}`` state dict saved with ``torch.save`` (loaded on the CPU, tensors only).

    Raises:
        ConfigError: naming the path when the file is missing, unreadable or not a flat dict of tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"weights file {str(file)!r} does not exist. Pass the path of a local .pth state dict; "
            "dragsaw never downloads weights."
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-object files
        raise ConfigError(
            f"weights file {str(file)!r} could not be read as a tensor state dict ({type(exc).__name__}: {exc}). "
            "Save weights with torch.save(module.state_dict(), path)."
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        kind = type(state).__name__
        items = state.items() if isinstance(state, Mapping) else ()
        first = [k for k, v in items if not isinstance(v, torch.Tensor)][:3]
        raise ConfigError(
            f"weights file {str(file)!r} holds a {kind}, not a flat dict of tensors"
            + (f" (non-tensor entries: {first})" if first else "")
            + ". Extract the backbone's state dict and save it with torch.save(state_dict, path)."
        )
    return dict(state)


def remap_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    pairs: Iterable[tuple[str, str]] | None,
    *,
    ignore: Iterable[str] = (),
    origin: str = "weights",
) -> dict[str, torch.Tensor]:
    """Translate ``source`` into the keys of ``target`` and check that it fits.

    Args:
        source: the state dict read from the file.
        target: the module's own state dict (keys and shapes to fill).
        pairs: ``(source prefix, target prefix)`` pairs of leaf modules; ``None`` means identical keys.
        ignore: source key prefixes to drop (e.g. an ImageNet classifier).
        origin: how to name the source in error messages (the file path).

    Returns:
        ``{target key: tensor}`` for every target key that the layout covers. A pointwise weight stored without its
        trailing 1x1 axes (``[out, in]``) is reshaped to the target's ``[out, in, 1, 1]``.

    Raises:
        ConfigError: listing the first missing, unexpected and shape-mismatched keys.
    """
    if pairs is None:
        mapping = {key: key for key in target}
    else:
        mapping = {}
        for src_prefix, dst_prefix in pairs:
            for key in target:
                if key.startswith(dst_prefix + ".") and "." not in key[len(dst_prefix) + 1 :]:
                    mapping[key] = src_prefix + key[len(dst_prefix) :]
    ignore = tuple(p + "." if not p.endswith(".") else p for p in ignore)
    out: dict[str, torch.Tensor] = {}
    missing, mismatched, used = [], [], set()
    for dst_key, src_key in mapping.items():
        if src_key not in source:
            if not dst_key.endswith("num_batches_tracked"):  # absent from older checkpoints; harmless to keep
                missing.append(src_key)
            continue
        used.add(src_key)
        value, want = source[src_key], target[dst_key]
        if value.shape != want.shape and value.numel() == want.numel() and value.shape == want.shape[: value.ndim]:
            value = value.reshape(want.shape)
        if value.shape != want.shape:
            mismatched.append(f"{src_key}: file {tuple(value.shape)} vs model {tuple(want.shape)}")
            continue
        out[dst_key] = value.to(want.dtype)
    unexpected = [k for k in source if k not in used and not k.startswith(ignore)]
    if missing or unexpected or mismatched:
        parts = []
        kinds = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for label, keys in kinds:
            if keys:
                more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {label}: {keys[:_SHOW]}{more}")
        raise ConfigError(
            f"{origin} does not fit the model: " + "; ".join(parts) + ". Check that the file matches the backbone "
            "(name, width, middle_blocks, spatial_dims, in_channels) and the weights_layout."
        )
    return out


def load_backbone_weights(backbone: nn.Module, path: str | Path, layout: str = "auto") -> list[str]:
    """Load local pretrained weights into ``backbone`` in place.

    Args:
        backbone: the backbone module (its own state dict defines the ``"dragsaw"`` layout).
        path: local ``.pth`` file of a flat state dict.
        layout: ``"dragsaw"`` (keys of ``backbone.state_dict()``), the backbone's external layout
            (``"cadene"`` for Xception, ``"torchvision"`` for ResNet), or ``"auto"``: external when the file has a
            top-level ``conv1.weight`` key (both external layouts have one, the dragsaw layouts do not).

    Returns:
        The target keys that kept their initialisation (not covered by the layout), e.g. the inner norms of the
        aligned Xception's separable convolutions when loading Cadene weights.

    Raises:
        ConfigError: for a missing/unreadable file, a layout the backbone does not support or a state dict that
            does not fit.
    """
    layout = check_choice("weights_layout", layout, LAYOUTS)
    source = read_state_dict(path)
    external = getattr(backbone, "external_layout", None)
    if layout == "auto":
        layout = external if external is not None and "conv1.weight" in source else "dragsaw"
    target = backbone.state_dict()
    if layout == "dragsaw":
        pairs, ignore = None, ()
    elif layout == external:
        pairs, ignore = backbone.external_key_pairs(), backbone.external_ignore
    else:
        supported = ["auto", "dragsaw"] + ([external] if external else [])
        raise ConfigError(
            f"weights_layout={layout!r} does not apply to the {type(backbone).__name__} backbone; "
            f"use one of {supported}."
        )
    origin = f"weights file {str(path)!r} ({layout} layout)"
    state = remap_state_dict(source, target, pairs, ignore=ignore, origin=origin)
    backbone.load_state_dict(state, strict=False)
    return [key for key in target if key not in state and not key.endswith("num_batches_tracked")]
