"""Attaching PDCR and UAFS to an unmodified network: feature taps, block insertion, receptive-field probing."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import did_you_mean

__all__ = ["FeatureTaps", "ReceptiveField", "insert_after", "list_tappable", "receptive_field"]


def list_tappable(model: nn.Module) -> list[str]:
    """Qualified names of every submodule of ``model`` (the names :class:`FeatureTaps` accepts)."""
    return [name for name, _ in model.named_modules() if name]


def _lookup(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        candidates = [n for n in modules if n]
        raise ValueError(
            f"{what}: {type(model).__name__} has no submodule named {name!r}.{did_you_mean(name, candidates)} "
            f"dragsaw.taps.list_tappable(model) lists all {len(candidates)} valid names."
        )
    return modules[name]


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(
        f"the tapped module returned {type(output).__name__}, not a tensor; pass select=callable to FeatureTaps "
        "to pick the tensor from its output."
    )


class FeatureTaps:
    """Collect the outputs of named submodules of an unmodified model through forward hooks.

    Use as a context manager (hooks are removed on exit, also after an exception) or call :meth:`close`.
    Outputs keep their autograd graph (not detached), so a loss on them trains the network.

    Args:
        model: any ``nn.Module``.
        names: qualified submodule names (see :func:`list_tappable`).
        select: optional ``callable(output) -> Tensor`` for modules that return tuples or dicts
            (default: the output itself, or element 0 of a tuple/list).

    Attributes:
        features: dict name -> the latest output of that module. A module called several times in one
            forward keeps its last output.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        select: Callable[[object], torch.Tensor] | None = None,
    ) -> None:
        names = list(names)
        if not names:
            raise ValueError("FeatureTaps needs at least one submodule name; got an empty list.")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"FeatureTaps got duplicated names {duplicated}; list each module once.")
        modules = {name: _lookup(model, name, "FeatureTaps") for name in names}
        self.names = names
        self.features: dict[str, torch.Tensor] = {}
        self._select = select or _first_tensor
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.features[name] = self._select(output)

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """Return the collected features and clear them (so no graph is kept alive between steps)."""
        features, self.features = self.features, {}
        return features

    def close(self) -> None:
        """Remove every hook and drop the collected features."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def insert_after(model: nn.Module, name: str, block: nn.Module) -> nn.Sequential:
    """Put ``block`` after the submodule ``name`` without editing the model's source.

    The submodule is replaced in its parent by ``nn.Sequential(original, block)``: its parameters move to
    ``"<name>.0.*"``, the block's are ``"<name>.1.*"``, and tapping ``name`` now yields the block's output
    (``"<name>.0"`` the output before it).

    Returns:
        The new ``nn.Sequential``.
    """
    if not isinstance(block, nn.Module):
        raise ValueError(f"block must be an nn.Module, got {type(block).__name__}.")
    original = _lookup(model, name, "insert_after")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    wrapped = nn.Sequential(original, block)
    setattr(parent, child, wrapped)
    return wrapped


@dataclass(frozen=True)
class ReceptiveField:
    """Geometry of a layer's locations in input pixels, per spatial axis.

    Attributes:
        stride: distance in input pixels between neighbouring locations.
        size: receptive field extent of one location.
        center_offset: input coordinate of the centre of location 0's receptive field
            (location ``i`` is centred at ``center_offset + i * stride``).
    """

    stride: tuple[int, ...]
    size: tuple[int, ...]
    center_offset: tuple[float, ...]


def _positive_copy(model: nn.Module) -> nn.Module:
    """A float64 copy with positive weights and identity-like norms, so no gradient path is cut by a ReLU.

    Instance and group norms (which mix every location of an image) become identities: the receptive field is
    a property of the convolutions and pools, not of per-image statistics.
    """
    probe = copy.deepcopy(model).double().eval()
    global_norms = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
    for name, module in list(probe.named_modules()):
        if name and isinstance(module, global_norms):
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent) if parent else probe, child, nn.Identity())
    with torch.no_grad():
        for module in probe.modules():
            for pname, param in module.named_parameters(recurse=False):
                param.copy_(param.abs() + 0.01 if pname != "bias" else torch.zeros_like(param))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    return probe


def receptive_field(
    model: nn.Module,
    layer: str,
    input_shape: Sequence[int],
    *,
    trials: int = 3,
    seed: int = 0,
) -> ReceptiveField:
    """Measure stride and receptive field of ``layer`` by gradient probing.

    A float64 copy of the model with positive weights (so no ReLU blocks a path) is run on ``trials`` random
    positive inputs; the input pixels with a non-zero gradient of a location's output are its receptive field
    (union over trials, which also covers max-pooling). Probing two neighbouring locations per axis gives the
    stride. The model itself is not modified.

    Args:
        model: any network taking ``[B, C, *S]``.
        layer: qualified submodule name.
        input_shape: ``(B, C, *S)``, the probe input's shape (the batch is set to 1); it must be large enough
            for the receptive field of a central location to stay inside it.

    Returns:
        :class:`ReceptiveField` with one entry per spatial axis.

    Raises:
        ValueError: unknown layer, too small an input (the field touches the border), or a layer whose
            output does not depend on the input.
    """
    _lookup(model, layer, "receptive_field")
    full = tuple(int(v) for v in input_shape)
    if len(full) < 3:
        raise ValueError(
            f"input_shape must be the full input shape (B, C, *S) with 1 to 3 spatial axes, got {tuple(input_shape)}."
        )
    full = (1, *full[1:])
    ndim = len(full) - 2
    probe = _positive_copy(model)
    generator = torch.Generator().manual_seed(seed)
    with FeatureTaps(probe, [layer]) as taps:
        try:
            probe(torch.rand(full, dtype=torch.float64, generator=generator))
        except RuntimeError as exc:
            raise ValueError(f"receptive_field: the model did not run on input_shape {full}: {exc}") from exc
        out = taps.features[layer]
    boxes = {}
    grid = out.shape[2:]
    centre = [(g - 1) // 2 for g in grid]
    probes = {"centre": centre}
    for axis in range(ndim):
        if grid[axis] > 1:
            probes[axis] = [c + (1 if a == axis else 0) for a, c in enumerate(centre)]
    for key, loc in probes.items():
        mask = torch.zeros(full[2:], dtype=torch.bool)
        for _ in range(trials):
            x = (torch.rand(full, dtype=torch.float64, generator=generator) + 0.5).requires_grad_(True)
            with FeatureTaps(probe, [layer]) as taps:
                probe(x)
                value = taps.features[layer][(0, slice(None), *loc)].sum()
            (grad,) = torch.autograd.grad(value, x)
            mask |= grad[0].abs().sum(0) > 0
        if not mask.any():
            raise ValueError(f"receptive_field: the output of layer {layer!r} does not depend on the input.")
        box = []
        for axis in range(ndim):
            other = [a for a in range(ndim) if a != axis]
            hit = mask.any(dim=tuple(other)) if other else mask
            idx = hit.nonzero().flatten()
            box.append((int(idx.min()), int(idx.max())))
        boxes[key] = box
    size, stride, offset = [], [], []
    for axis, (lo, hi) in enumerate(boxes["centre"]):
        if lo == 0 or hi == full[2 + axis] - 1:
            raise ValueError(
                f"receptive_field: the receptive field of layer {layer!r} reaches the border of the probe input "
                f"{full[2:]} on axis {axis}; pass a larger input_shape."
            )
        size.append(hi - lo + 1)
        step = boxes[axis][axis][0] - lo if axis in boxes else full[2 + axis]
        stride.append(step)
        offset.append((lo + hi) / 2 - centre[axis] * step)
    return ReceptiveField(tuple(stride), tuple(size), tuple(offset))
