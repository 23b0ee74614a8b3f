"""Label composition (phi): the class histogram of the label patch that belongs to a feature location.

Definition (METHOD.md section 0). A feature map with stride ``s`` (per axis) has ``ceil(S / s)`` locations per
axis; location ``i`` summarises the input block ``[i*s, i*s + s - 1]``. Its patch of length ``k`` starts at
``i*s - floor((k - s) / 2)``, has length ``k`` and is clipped to the image. ``phi_i`` is the histogram of the
``K`` classes over the patch's in-image, not-ignored pixels divided by their count. A patch without any valid
pixel has ``phi_i = 0`` (all zeros), which the loss reads as "leave this location out".

Everything here is computed with separable box sums (one spatial axis after the other, over packed one-hot
codes), never with a Python loop over locations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import as_axis_tuple, check_int_labels

__all__ = ["label_composition", "LabelIntegral", "patch_bounds", "patch_series_counts"]


def patch_bounds(index: torch.Tensor, stride: int, patch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped half-open patch bounds ``[start, end)`` along one axis for feature indices ``index``.

    Shape:
        ``index``: any integer shape; returns two tensors of the same shape.
    """
    start = index * stride - (patch - stride) // 2  # floor division: also right for k < s
    end = start + patch
    return start.clamp(0, size), end.clamp(0, size)


# Window sums along one axis: strided additions for patches up to this many strides long, a cumulative sum
# and two gathers beyond (a cumulative sum costs about as much as this many additions of one strided pass).
_STRIDED_LIMIT = 8


def _window_sums(
    x: torch.Tensor, axis: int, stride: int, patch: int, size: int, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Sums of ``x`` over the clipped patches of grid locations ``index`` (default: all) along ``axis``.

    Short patches add ``patch`` strided slices (offset ``j`` of every window at once; out-of-image offsets are
    skipped, which is the clipping), touching ``patch / stride`` of the axis; long patches take differences of
    a zero-led cumulative sum. Both are exact for integer ``x`` (sums stay in ``x``'s dtype).

    Shape:
        ``x`` ``[..., size, ...]`` with the summed axis at ``axis``; returns the same with that axis replaced by
        ``ceil(size / stride)`` (or ``len(index)``).
    """
    grid = -(-size // stride)
    if patch > _STRIDED_LIMIT * stride:
        if index is None:
            index = torch.arange(grid, device=x.device)
        start, end = patch_bounds(index, stride, patch, size)
        pad = [0, 0] * (x.ndim - 1 - axis) + [1, 0]
        cumulative = F.pad(torch.cumsum(x, dim=axis, dtype=x.dtype), pad)
        return cumulative.index_select(axis, end) - cumulative.index_select(axis, start)
    shape = list(x.shape)
    shape[axis] = grid
    out = x.new_zeros(shape)
    lead = (patch - stride) // 2  # window i covers i*stride - lead + j, j = 0..patch-1
    for j in range(patch):
        offset = j - lead
        first = max(0, -(offset // stride))  # smallest i with i*stride + offset >= 0
        last = min(grid - 1, (size - 1 - offset) // stride)
        if last < first:
            continue
        begin = first * stride + offset
        count = last - first + 1
        picked = x.narrow(axis, begin, (count - 1) * stride + 1)
        if stride > 1:
            picked = picked[(slice(None),) * axis + (slice(None, None, stride),)]
        out.narrow(axis, first, count).add_(picked)
    return out if index is None else out.index_select(axis, index)


def _pack(labels: torch.Tensor, num_classes: int, ignore_index: int | None, bits: int, per_word: int) -> torch.Tensor:
    """``[B, *S]`` checked int64 labels -> ``[B, W, *S]`` int32 packed one-hot codes.

    Class ``c`` is the bit field ``c % per_word`` (``bits`` wide) of word ``c // per_word``: a pixel of class
    ``c`` holds ``1 << bits * (c % per_word)`` there and 0 elsewhere; ignored pixels are 0 in every word. Sums of
    codes are then the class counts side by side, exact while no count exceeds ``2**bits - 1``: one int32 pass
    over the labels instead of ``K`` one-hot channels.
    """
    words = -(-num_classes // per_word)
    if words == 1 and ignore_index is None:  # arithmetic on int32 is cheaper than a table lookup
        codes = labels.to(torch.int32)
        if num_classes == 2:
            return codes.mul_((1 << bits) - 1).add_(1).unsqueeze(1)
        one = torch.ones((), dtype=torch.int32, device=labels.device)
        return torch.bitwise_left_shift(one, codes.mul_(bits)).unsqueeze(1)
    table = torch.zeros(words, num_classes + 1, dtype=torch.int32, device=labels.device)
    for c in range(num_classes):
        if c != ignore_index:
            table[c // per_word, c] = 1 << bits * (c % per_word)
    if ignore_index is not None and not 0 <= ignore_index < num_classes:
        labels = torch.where(labels == ignore_index, num_classes, labels)  # the all-zero column
    return torch.stack([table[w].take(labels) for w in range(words)], 1)


def _unpack(packed: torch.Tensor, num_classes: int, bits: int, per_word: int) -> torch.Tensor:
    """Inverse of :func:`_pack` after summing: ``[B, W, ...]`` packed counts -> ``[B, K, ...]`` int32 counts."""
    mask = (1 << bits) - 1
    return torch.stack(
        [(packed[:, c // per_word] >> bits * (c % per_word)) & mask for c in range(num_classes)], 1
    )


class LabelIntegral:
    """Box sums of class counts over a label batch, for any stride and patch length.

    The labels are packed once into int32 words holding several classes' one-hot codes side by side (one word
    for up to three classes), so every axis sums all classes at once; the first axis is the only pass over the
    full-size map. A query reduces one axis after the other to its grid and unpacks the counts at the end (or
    after the first axis, for patches so large that a count would outgrow its bit field). Short patches are
    summed by strided additions (a fraction of a pass per patch length), long ones by cumulative sums.

    Args:
        labels: int tensor ``[B, *S]`` (``S`` one to three spatial axes) of class indices.
        num_classes: ``K``, background included.
        ignore_index: a label value to leave out of every histogram (may lie outside ``0..K-1``).
        checked: the labels already passed ``check_int_labels`` (int64, in range): skip that pass over them.

    Attributes:
        size: the spatial size ``S``.
    """

    def __init__(
        self, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None, *, checked: bool = False
    ) -> None:
        if labels.ndim < 2:
            raise ValueError(
                f"labels must have shape [B, *S] with 1 to 3 spatial axes, got shape {tuple(labels.shape)}; "
                "add a batch axis with labels[None] for a single image."
            )
        if not checked:
            labels = check_int_labels(labels, num_classes, ignore_index)
        self.size = tuple(labels.shape[1:])
        self.num_classes = num_classes
        # Fields must hold any count along the first axis (at most its length, also for a cumulative sum); of
        # the fewest words that allows, take the widest fields, so that most queries stay packed to the end.
        words = -(-num_classes // (31 // max(1, self.size[0].bit_length())))
        self._per_word = -(-num_classes // words)
        self._bits = 31 // self._per_word
        self._packed = _pack(labels, num_classes, ignore_index, self._bits, self._per_word)

    def grid(
        self, stride: Sequence[int], patch: Sequence[int], index: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Class counts for the locations of a grid with ``stride``, patches of length ``patch`` (per axis).

        Args:
            index: optional per-axis grid indices to evaluate (their Cartesian product); default all.

        Shape:
            returns int32 ``[B, K, *grid]`` with ``grid = ceil(S / stride)`` per axis (or the lengths of ``index``).
        """
        index = index or [None] * len(self.size)
        # the largest value a field takes on the way: a window sum holds at most the clipped patch volume so far,
        # a cumulative sum that volume times the whole axis
        largest, volume = 0, 1
        for k, s, n in zip(patch, stride, self.size):
            largest = max(largest, volume * (n if k > _STRIDED_LIMIT * s else min(k, n)))
            volume *= min(k, n)
        packed = largest < 1 << self._bits  # else unpack after the first axis (counts of one axis always fit)
        out = _window_sums(self._packed, 2, stride[0], patch[0], self.size[0], index[0])
        if not packed:
            out = _unpack(out, self.num_classes, self._bits, self._per_word)
        for axis in range(1, len(self.size)):
            out = _window_sums(out, axis + 2, stride[axis], patch[axis], self.size[axis], index[axis])
        return _unpack(out, self.num_classes, self._bits, self._per_word) if packed else out

    def points(self, positions: torch.Tensor, stride: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
        """Class counts of the patches of the feature locations ``positions``.

        Only the Cartesian product of the coordinates that occur on each axis is evaluated (for the regular
        sampling lattice that is exactly the lattice), then the points are gathered from it.

        Shape:
            ``positions``: long ``[B, N, d]`` feature-grid indices; returns int32 ``[B, K, N]``.
        """
        coords = [torch.unique(positions[..., axis]) for axis in range(positions.shape[-1])]
        counts = self.grid(stride, patch, coords)
        linear = torch.zeros_like(positions[..., 0])
        for axis, values in enumerate(coords):
            linear = linear * len(values) + torch.searchsorted(values, positions[..., axis].contiguous())
        flat = counts.flatten(2)
        return flat.gather(2, linear.unsqueeze(1).expand(-1, flat.shape[1], -1))


def patch_series_counts(
    labels: torch.Tensor,
    positions: torch.Tensor,
    stride: Sequence[int],
    patches: Sequence[Sequence[int]],
    num_classes: int,
    ignore_index: int | None = None,
) -> list[torch.Tensor]:
    """Class counts of the patches of feature locations ``positions``, for a series of patch lengths at once.

    The same boxes as :meth:`LabelIntegral.points` (clipped, ignored pixels left out), read by gathering the
    labels of each location's largest window once (per axis, every patch of the series lies inside the longest
    one, since all are centred on the same block), then summing the sub-window of each patch length: a cost of
    ``B * N * prod(max patch)`` reads instead of a pass over the whole label map, the fast path for a few sampled
    locations with small patches. ``labels`` must already be checked (int64, values in range or ignored).

    Shape:
        ``labels`` ``[B, *S]``, ``positions`` long ``[B, N, d]``; returns one int32 ``[B, K, N]`` per patch.
    """
    batch, count, ndim = positions.shape
    size = labels.shape[1:]
    union = [max(p[axis] for p in patches) for axis in range(ndim)]
    linear, valid = None, None
    for axis in range(ndim):
        start = positions[..., axis] * stride[axis] - (union[axis] - stride[axis]) // 2  # [B, N]
        coord = start.unsqueeze(-1) + torch.arange(union[axis], device=labels.device)  # [B, N, k]
        inside = (coord >= 0) & (coord < size[axis])
        coord = coord.clamp(0, size[axis] - 1)
        shape = [batch, count] + [1] * ndim
        shape[2 + axis] = union[axis]
        coord, inside = coord.view(shape), inside.view(shape)
        linear = coord if linear is None else linear * size[axis] + coord
        valid = inside if valid is None else valid & inside
    values = labels.flatten(1).gather(1, linear.expand(batch, count, *union).flatten(1))
    values = values.view(batch, count, *union, 1)
    hits = values == torch.arange(num_classes, device=labels.device)  # [B, N, *union, K]
    valid = valid.unsqueeze(-1)
    if ignore_index is not None:
        valid = valid & (values != ignore_index)
    hits = (hits & valid).to(torch.int32)
    out = []
    for patch in patches:
        window = hits
        for axis in range(ndim):  # patch k starts (u - s)//2 - (k - s)//2 cells into the longest window u
            offset = (union[axis] - stride[axis]) // 2 - (patch[axis] - stride[axis]) // 2
            window = window.narrow(2 + axis, offset, patch[axis])
        out.append(window.sum(tuple(range(2, 2 + ndim)), dtype=torch.int32).transpose(1, 2))
    return out


def counts_to_composition(counts: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Normalise class counts along ``dim`` to probability vectors (all-zero where there is no valid pixel)."""
    total = counts.sum(dim, keepdim=True)
    return counts.float() / total.clamp(min=1).float()


def label_composition(
    labels: torch.Tensor,
    num_classes: int,
    stride: int | Sequence[int],
    patch_size: int | Sequence[int],
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Class composition of the label patch of every location of a feature grid (METHOD.md section 0).

    Args:
        labels: int tensor ``[B, *S]`` of class indices in ``0..K-1`` (or ``ignore_index``), 1 to 3 spatial axes.
        num_classes: ``K``, background included.
        stride: the feature map's stride relative to the labels, an int or one per axis.
        patch_size: patch length ``k`` in label pixels (any ``k >= 1``), an int or one per axis.
        ignore_index: a label value excluded from every histogram.

    Returns:
        float32 ``[B, K, *grid]`` with ``grid = ceil(S / stride)`` per axis. Each vector sums to 1, or is all zero
        where the patch holds no valid pixel.

    Raises:
        ValueError: float or out-of-range labels, or a stride / patch size that does not fit the label axes.
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim not in (2, 3, 4):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels must be an integer tensor [B, *S] with 1 to 3 spatial axes, got {shape}; "
            "for one image add a batch axis (labels[None])."
        )
    spatial = labels.ndim - 1
    strides = as_axis_tuple(stride, spatial, "stride")
    patches = as_axis_tuple(patch_size, spatial, "patch_size")
    integral = LabelIntegral(labels, num_classes, ignore_index)
    return counts_to_composition(integral.grid(strides, patches))
