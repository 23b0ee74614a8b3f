"""Attaching PDCR and UAFS to an unmodified network: feature taps, block insertion, receptive-field probing, and
:func:`suggest`, which lists the feature maps of any network so that taps can be chosen by stride."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import did_you_mean

__all__ = [
    "FeatureTaps",
    "MapSuggestion",
    "ReceptiveField",
    "format_suggestions",
    "insert_after",
    "list_tappable",
    "receptive_field",
    "suggest",
]


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


# ---------------------------------------------------------------------------------------------------------------
# suggest: every feature map of a network, with its stride and role


SUGGEST_ROLES = ("encoder", "bottleneck", "decoder")


@dataclass(frozen=True)
class MapSuggestion:
    """One submodule whose output, in a probe forward, is a feature map ``[B, C, *S]`` (see :func:`suggest`).

    Attributes:
        name: qualified submodule name (valid for ``net.get_submodule`` and :class:`FeatureTaps`).
        channels: ``C``.
        size: the map's spatial size for the probe input.
        stride: per-axis ``input size / map size`` when that is a whole number on every axis, else ``None``.
        order: position in the order in which the modules *returned* (0 = first; a container returns after
            its children).
        role: ``"encoder"`` (a coarser map is still to come: on the way down), ``"bottleneck"`` (at the coarsest
            stride of the network) or ``"decoder"`` (after the coarsest map, on the way up); ``None`` without a
            stride, or for a map of one location per axis (global pooling).
        calls: how often the module ran in the forward (a module called more than once, e.g. a shared
            activation, is described by its last call, which is also what :class:`FeatureTaps` keeps).
        inputs: tensors the module was called with (``insert_after`` can only follow a module with one).
        input_stride: the stride of its first tensor input when that is a map with a whole stride, else ``None``
            (a module with ``input_stride`` finer than ``stride`` downsamples, coarser upsamples).
        spans_strides: a submodule returned a tensor that is not a map at the same stride (the module is a
            container of several stages, e.g. a skip connection around a deeper part of the network). Maps of one
            location per axis (global pooling, e.g. squeeze-excitation) do not count.
        modified_in_place: the output was changed in place later in the forward (e.g. by an in-place
            activation), so a hook sees other values than the next layer does.
        receptive_field: the measured :class:`ReceptiveField` (``suggest(..., receptive_fields=True)``, for
            candidates only; ``None`` otherwise or when the field reaches the border of the probe input).
    """

    name: str
    channels: int
    size: tuple[int, ...]
    stride: tuple[int, ...] | None
    order: int
    role: str | None
    calls: int = 1
    inputs: int = 1
    input_stride: tuple[int, ...] | None = None
    spans_strides: bool = False
    modified_in_place: bool = False
    receptive_field: ReceptiveField | None = None

    @property
    def candidate(self) -> bool:
        """Whether the map can serve both as a PDCR tap and as a UAFS insertion point as it is: a whole stride, one
        call with one tensor input, no submodule at another stride, not changed in place afterwards."""
        return (
            self.stride is not None and self.calls == 1 and self.inputs == 1 and not self.spans_strides
            and not self.modified_in_place
        )

    def __str__(self) -> str:
        return format_suggestions([self], header=False)


@dataclass
class _Call:
    position: int
    output: object
    version: int
    inputs: int
    first_input: tuple[int, ...] | None  # shape of the first tensor argument


def _probe_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ValueError(f"suggest: input_shape must be a sequence (B, C, *S), got {input_shape!r}.")
    shape = tuple(input_shape)
    if not 3 <= len(shape) <= 5 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(
            f"suggest: input_shape must be the full input shape (B, C, *S) with 1 to 3 spatial axes of positive "
            f"ints, got {tuple(input_shape)!r}; e.g. (1, 3, 256, 256) or (1, 1, 64, 64, 64)."
        )
    return shape


def _record_calls(
    net: nn.Module, shape: tuple[int, ...], on_meta: bool
) -> tuple[dict[str, list[_Call]], dict[str, nn.Module]]:
    """Run ``net`` once on zeros of ``shape`` (eval mode, no gradients) and record every submodule call.

    With ``on_meta`` the forward first runs with every parameter and buffer replaced by a meta tensor
    (``torch.func.functional_call``: shapes only, restored afterwards); if that fails (an operation without a meta
    implementation, a tensor kept outside the parameters), it runs for real on the network's device.
    """
    modules = {name: module for name, module in net.named_modules() if name}  # aliases once, by their first name
    calls: dict[str, list[_Call]] = {name: [] for name in modules}
    counter = [0]

    def hook_for(name: str):
        def hook(module, args, kwargs, output):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            version = output._version if isinstance(output, torch.Tensor) else 0
            first_input = tuple(tensors[0].shape) if tensors else None
            calls[name].append(_Call(counter[0], output, version, len(tensors), first_input))
            counter[0] += 1

        return hook

    first = next(net.parameters(), None)
    dtype = first.dtype if first is not None else torch.get_default_dtype()
    device = first.device if first is not None else torch.device("cpu")
    modes = {module: module.training for module in net.modules()}
    handles = [m.register_forward_hook(hook_for(n), with_kwargs=True) for n, m in modules.items()]
    try:
        net.eval()
        with torch.no_grad():
            done = False
            if on_meta and device.type != "meta":
                state = {n: torch.empty_like(t, device="meta") for n, t in net.named_parameters()}
                state.update({n: torch.empty_like(t, device="meta") for n, t in net.named_buffers()})
                try:
                    torch.func.functional_call(net, state, (torch.zeros(shape, dtype=dtype, device="meta"),))
                    done = True
                except Exception:  # no meta implementation somewhere: run it for real below
                    for entries in calls.values():
                        entries.clear()
                    counter[0] = 0
            if not done:
                try:
                    net(torch.zeros(shape, dtype=dtype, device=device))
                except Exception as exc:  # report any failure of the probe as a bad input shape
                    raise ValueError(
                        f"suggest: {type(net).__name__} did not run on an input of shape {shape}: {exc}. Pass an "
                        "input_shape the network accepts (channels, and a size divisible by its total "
                        "downsampling)."
                    ) from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return calls, modules


def suggest(
    net: nn.Module, input_shape: Sequence[int], *, receptive_fields: bool = False, on_meta: bool = True
) -> list[MapSuggestion]:
    """List every submodule of ``net`` whose output is a feature map, with channels, stride and role.

    ``net`` runs once on zeros of ``input_shape`` without gradients and in eval mode (no batch-norm statistic
    changes); every submodule's train/eval mode is restored and the hooks are removed afterwards, and ``net`` is
    not otherwise changed. A submodule's output is a map when it is a tensor ``[B, C, *S']`` with the input's
    batch size and number of axes; its stride is ``S / S'`` per axis when whole. Roles follow the order in
    which modules return: a map is ``"encoder"`` while a coarser map (larger product of strides) is still to
    come, ``"bottleneck"`` at the coarsest stride, ``"decoder"`` after it; maps of one location per axis (global
    pooling) are left out of that comparison, so choose an input whose coarsest map has at least 2 locations per
    axis. Networks that keep channels last internally (e.g. Swin transformers) can show such tensors as maps
    with odd channels and strides; they are never ``candidate`` when their stride is not whole.

    By default the probe computes shapes only: it runs with the parameters and buffers swapped for meta tensors
    (``torch.func.functional_call``, undone afterwards), which takes a fraction of a real forward; when some
    operation cannot run that way it falls back to a real forward on zeros, which keeps every output until it
    returns: then use a small input (a few times the total downsampling).

    Args:
        net: any ``nn.Module`` taking one tensor ``[B, C, *S]``.
        input_shape: ``(B, C, *S)`` of the probe input (1 to 3 spatial axes); ``B = 1`` is enough.
        receptive_fields: also measure the receptive field of every candidate map with :func:`receptive_field`
            (a gradient probe per map: slow for large networks).
        on_meta: try the shapes-only probe first (``False``: always a real forward).

    Returns:
        One :class:`MapSuggestion` per map, in the order the modules returned (``order`` 0, 1, ...); print them
        with :func:`format_suggestions`.

    Shape:
        For ``input_shape = (B, C_in, *S)`` a module's output ``[B, C, *G]`` is listed with ``channels = C``,
        ``size = G`` and ``stride = S / G`` per axis (``None`` unless every axis divides): e.g. ``(1, 1, 64, 48)`` and
        a map ``[1, 32, 16, 12]`` give stride ``(4, 4)``.

    Raises:
        ValueError: a malformed ``input_shape``, or the network does not run on it (the message has the error).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1),
        ...                     nn.ConvTranspose2d(8, 2, 4, stride=4))
        >>> [(s.name, s.channels, s.stride, s.role) for s in suggest(net, (1, 1, 16, 16))]
        [('0', 4, (2, 2), 'encoder'), ('1', 8, (4, 4), 'bottleneck'), ('2', 2, (1, 1), 'decoder')]
    """
    shape = _probe_shape(input_shape)
    calls, modules = _record_calls(net, shape, on_meta)
    spatial = shape[2:]

    def is_map(out: object) -> bool:
        return (
            isinstance(out, torch.Tensor) and out.ndim == len(shape) and out.shape[0] == shape[0]
            and all(v > 0 for v in out.shape[1:])
        )

    def stride_of(out: torch.Tensor | tuple[int, ...]) -> tuple[int, ...] | None:
        grid = tuple(out.shape[2:]) if isinstance(out, torch.Tensor) else tuple(out[2:])
        if any(g < 1 or g > s or s % g for s, g in zip(spatial, grid)):
            return None
        return tuple(s // g for s, g in zip(spatial, grid))

    def is_global(out: torch.Tensor) -> bool:
        return all(g == 1 for g in out.shape[2:]) and any(s > 1 for s in spatial)

    # maps with a whole stride that are not global pools, in return order: (position, product of strides)
    events = sorted(
        (call.position, math.prod(stride_of(call.output)))
        for entries in calls.values() for call in entries
        if is_map(call.output) and not is_global(call.output) and stride_of(call.output) is not None
    )
    coarsest = max((p for _, p in events), default=0)
    later_max: dict[int, int] = {}
    running = 0
    for position, product in reversed(events):
        later_max[position] = running
        running = max(running, product)

    by_id = {id(m): n for n, m in modules.items()}
    found = []
    for name, module in modules.items():
        entries = calls[name]
        if not entries or not is_map(entries[-1].output):
            continue
        last = entries[-1]
        out = last.output
        stride = stride_of(out)
        spans = False
        for sub in module.modules():
            sub_name = by_id.get(id(sub))
            if sub is module or sub_name is None:
                continue
            for call in calls[sub_name]:
                if not isinstance(call.output, torch.Tensor):
                    continue
                if not is_map(call.output):
                    spans = True
                elif not is_global(call.output) and (stride is None or stride_of(call.output) != stride):
                    spans = True
        role = None
        if stride is not None and not is_global(out):
            product = math.prod(stride)
            if later_max.get(last.position, 0) > product:
                role = "encoder"
            elif product == coarsest:
                role = "bottleneck"
            else:
                role = "decoder"
        source = last.first_input
        in_stride = (
            stride_of(source) if source is not None and len(source) == len(shape) and source[0] == shape[0] else None
        )
        found.append((last.position, MapSuggestion(
            name=name, channels=int(out.shape[1]), size=tuple(int(v) for v in out.shape[2:]), stride=stride,
            order=0, role=role, calls=len(entries), inputs=last.inputs, input_stride=in_stride, spans_strides=spans,
            modified_in_place=out._version != last.version,
        )))
    found.sort(key=lambda item: item[0])
    records = []
    for order, (_, record) in enumerate(found):
        field = None
        if receptive_fields and record.candidate:
            try:
                field = receptive_field(net, record.name, shape)
            except ValueError:  # the field reaches the border of the probe input (or does not depend on it)
                field = None
        records.append(MapSuggestion(**{**record.__dict__, "order": order, "receptive_field": field}))
    return records


def format_suggestions(
    records: Iterable[MapSuggestion], *, header: bool = True, candidates_only: bool = False
) -> str:
    """The maps of :func:`suggest` as a fixed-width text table, one line per map.

    Columns: order, name, role, channels, stride, map size, receptive field (when measured) and notes: ``*``
    marks candidates; ``calls=n``, ``inputs=n``, ``spans``, ``in-place`` say why a map is not one.
    ``candidates_only`` leaves the other maps out.
    """

    def axes(values: tuple[int, ...] | None) -> str:
        return "-" if values is None else "x".join(str(v) for v in values)

    rows = []
    for r in records:
        if candidates_only and not r.candidate:
            continue
        notes = []
        if r.calls != 1:
            notes.append(f"calls={r.calls}")
        if r.inputs != 1:
            notes.append(f"inputs={r.inputs}")
        if r.spans_strides:
            notes.append("spans")
        if r.modified_in_place:
            notes.append("in-place")
        rf = axes(r.receptive_field.size) if r.receptive_field is not None else "-"
        rows.append([str(r.order), ("* " if r.candidate else "  ") + r.name, r.role or "-", str(r.channels),
                     axes(r.stride), axes(r.size), rf, " ".join(notes)])
    titles = ["order", "  name", "role", "channels", "stride", "size", "rf", "notes"]
    table = ([titles] if header else []) + rows
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(titles))]
    right = {0, 3}
    lines = [
        "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        .rstrip()
        for row in table
    ]
    return "\n".join(lines)
