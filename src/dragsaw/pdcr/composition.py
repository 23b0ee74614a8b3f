"""Label composition (phi): the class histogram of the label patch that belongs to a feature location.

Definition (METHOD.md section 0). A feature map with stride ``s`` (per axis) has ``ceil(S / s)`` locations per
axis; location ``i`` summarises the input block ``[i*s, i*s + s - 1]``. Its patch of length ``k`` starts at
``i*s - floor((k - s) / 2)``, has length ``k`` and is clipped to the image. ``phi_i`` is the histogram of the
``K`` classes over the patch's in-image, not-ignored pixels divided by their count. A patch without any valid
pixel has ``phi_i = 0`` (all zeros), which the loss reads as "leave this location out".

Everything here is computed with box sums (cumulative sums of the one-hot labels and gathers at the patch
bounds, one spatial axis after the other), never with a Python loop over locations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import as_axis_tuple, check_int_labels

__all__ = ["label_composition", "LabelIntegral", "patch_bounds", "patch_counts"]


def patch_bounds(index: torch.Tensor, stride: int, patch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped half-open patch bounds ``[start, end)`` along one axis for feature indices ``index``.

    Shape:
        ``index``: any integer shape; returns two tensors of the same shape.
    """
    start = index * stride - (patch - stride) // 2  # floor division: also right for k < s
    end = start + patch
    return start.clamp(0, size), end.clamp(0, size)


def _one_hot_channels(labels: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """``[B, *S]`` int labels -> ``[B, K, *S]`` int32 one-hot; ignored pixels are all-zero."""
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, *([1] * (labels.ndim - 1)))
    onehot = labels.unsqueeze(1) == classes
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        onehot &= labels.unsqueeze(1) != ignore_index
    return onehot.to(torch.int32)


def _interval_sums(
    cumulative: torch.Tensor, axis: int, stride: int, patch: int, size: int, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Sums over the patches of grid locations ``index`` (default: all) along ``axis``, from a zero-led cumulative
    sum along that axis."""
    if index is None:
        index = torch.arange(-(-size // stride), device=cumulative.device)
    start, end = patch_bounds(index, stride, patch, size)
    return cumulative.index_select(axis, end) - cumulative.index_select(axis, start)


def _cumulative(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Cumulative sum along ``axis`` with a leading zero plane (int32, exact)."""
    pad = [0, 0] * (x.ndim - 1 - axis) + [1, 0]
    return F.pad(torch.cumsum(x, dim=axis, dtype=torch.int32), pad)


class LabelIntegral:
    """Box sums of class counts over a label batch, for any stride and patch length.

    The one-hot labels are summed cumulatively along the first spatial axis once (shared by every stride and
    patch length); each query then reduces that axis to the grid and repeats the cumulative-sum-and-gather on
    the (much smaller) remaining axes, so a query costs a fraction of one pass over the labels.

    Args:
        labels: int tensor ``[B, *S]`` (``S`` one to three spatial axes) of class indices.
        num_classes: ``K``, background included.
        ignore_index: a label value to leave out of every histogram (may lie outside ``0..K-1``).

    Attributes:
        size: the spatial size ``S``.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> None:
        if labels.ndim < 2:
            raise ValueError(
                f"labels must have shape [B, *S] with 1 to 3 spatial axes, got shape {tuple(labels.shape)}; "
                "add a batch axis with labels[None] for a single image."
            )
        labels = check_int_labels(labels, num_classes, ignore_index)
        self.size = tuple(labels.shape[1:])
        self.num_classes = num_classes
        self._first = _cumulative(_one_hot_channels(labels, num_classes, ignore_index), 2)

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
        out = _interval_sums(self._first, 2, stride[0], patch[0], self.size[0], index[0])
        for axis in range(1, len(self.size)):
            out = _interval_sums(_cumulative(out, axis + 2), axis + 2, stride[axis], patch[axis], self.size[axis],
                                 index[axis])
        return out

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


def patch_counts(
    labels: torch.Tensor,
    positions: torch.Tensor,
    stride: Sequence[int],
    patch: Sequence[int],
    num_classes: int,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Class counts of the patches of feature locations ``positions``, by gathering the patches' labels.

    The same boxes as :meth:`LabelIntegral.points` (clipped, ignored pixels left out), at a cost of
    ``B * N * prod(patch)`` reads instead of a pass over the whole label map: the fast path for a few sampled
    locations with small patches. ``labels`` must already be checked (int64, values in range or ignored).

    Shape:
        ``labels`` ``[B, *S]``, ``positions`` long ``[B, N, d]``; returns int32 ``[B, K, N]``.
    """
    batch, count, ndim = positions.shape
    size = labels.shape[1:]
    linear, valid = None, None
    for axis in range(ndim):
        start = positions[..., axis] * stride[axis] - (patch[axis] - stride[axis]) // 2  # [B, N]
        coord = start.unsqueeze(-1) + torch.arange(patch[axis], device=labels.device)  # [B, N, k]
        inside = (coord >= 0) & (coord < size[axis])
        coord = coord.clamp(0, size[axis] - 1)
        shape = [batch, count] + [1] * ndim
        shape[2 + axis] = patch[axis]
        coord, inside = coord.view(shape), inside.view(shape)
        linear = coord if linear is None else linear * size[axis] + coord
        valid = inside if valid is None else valid & inside
    values = labels.flatten(1).gather(1, linear.expand(batch, count, *patch).flatten(1)).view(batch, count, -1)
    valid = valid.expand(batch, count, *patch).reshape(batch, count, -1)
    if ignore_index is not None:
        valid = valid & (values != ignore_index)
    counts = torch.zeros(batch, count, num_classes, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(2, torch.where(valid, values, 0).clamp(0, num_classes - 1), valid.to(torch.int32))
    return counts.transpose(1, 2)


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
