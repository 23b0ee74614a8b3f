"""Label composition (phi): the class histogram of the label patch that belongs to a feature location.

Definition (METHOD.md section 0). A feature map with stride ``s`` (per axis) has ``ceil(S / s)`` locations per
axis; location ``i`` summarises the input block ``[i*s, i*s + s - 1]``. Its patch of length ``k`` starts at
``i*s - floor((k - s) / 2)``, has length ``k`` and is clipped to the image. ``phi_i`` is the histogram of the
``K`` classes over the patch's in-image, not-ignored pixels divided by their count. A patch without any valid
pixel has ``phi_i = 0`` (all zeros), which the loss reads as "leave this location out".

Everything here is computed with box sums over a zero-padded integral image (cumulative sums of the one-hot
labels along every spatial axis), never with a Python loop over locations: one integral image per label batch,
then ``2**d`` gathers per set of boxes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import as_axis_tuple, check_int_labels

__all__ = ["label_composition", "LabelIntegral", "patch_bounds"]


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


class LabelIntegral:
    """Integral image of one-hot labels, for box sums of class counts at arbitrary patches.

    Args:
        labels: int tensor ``[B, *S]`` (``S`` one to three spatial axes) of class indices.
        num_classes: ``K``, background included.
        ignore_index: a label value to leave out of every histogram (may lie outside ``0..K-1``).

    Attributes:
        table: int32 ``[B, K, *(S + 1)]``, cumulative counts with a leading zero plane on every axis.
        size: the spatial size ``S``.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> None:
        if labels.ndim < 2:
            raise ValueError(
                f"labels must have shape [B, *S] with 1 to 3 spatial axes, got shape {tuple(labels.shape)}; "
                "add a batch axis with labels[None] for a single image."
            )
        check_int_labels(labels, num_classes, ignore_index)
        table = _one_hot_channels(labels, num_classes, ignore_index)
        spatial = labels.ndim - 1
        for axis in range(2, 2 + spatial):
            table = torch.cumsum(table, dim=axis, dtype=torch.int32)
        self.table = F.pad(table, (1, 0) * spatial)
        self.size = tuple(labels.shape[1:])
        self.num_classes = num_classes

    def grid(self, stride: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
        """Class counts for every location of a grid with ``stride``, patches of length ``patch`` (per axis).

        Shape:
            returns int32 ``[B, K, *grid]`` with ``grid = ceil(S / stride)`` per axis.
        """
        out = self.table
        for axis, (size, s, k) in enumerate(zip(self.size, stride, patch)):
            index = torch.arange(-(-size // s), device=out.device)
            start, end = patch_bounds(index, s, k, size)
            out = out.index_select(axis + 2, end) - out.index_select(axis + 2, start)
        return out

    def points(self, positions: torch.Tensor, stride: Sequence[int], patch: Sequence[int]) -> torch.Tensor:
        """Class counts of the patches of the feature locations ``positions``.

        Shape:
            ``positions``: long ``[B, N, d]`` feature-grid indices; returns int32 ``[B, K, N]``.
        """
        batch, count, ndim = positions.shape
        bounds = []
        for axis in range(ndim):
            bounds.append(patch_bounds(positions[..., axis], stride[axis], patch[axis], self.size[axis]))
        flat = self.table.flatten(2)
        # linear strides of the padded table
        strides = [1] * ndim
        for axis in range(ndim - 2, -1, -1):
            strides[axis] = strides[axis + 1] * (self.size[axis + 1] + 1)
        total = torch.zeros(batch, self.num_classes, count, dtype=torch.int32, device=flat.device)
        for corner in itertools.product((0, 1), repeat=ndim):
            linear = sum(bounds[a][c] * strides[a] for a, c in enumerate(corner))
            sign = 1 if (ndim - sum(corner)) % 2 == 0 else -1
            gathered = flat.gather(2, linear.unsqueeze(1).expand(batch, self.num_classes, count))
            total = total + sign * gathered
        return total


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
