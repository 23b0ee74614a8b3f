"""Choosing the N feature locations of a tapped layer that take part in the PDCR loss.

Two samplers, both inside a border crop of the feature grid:

- ``grid``: a regular lattice, evenly spaced on every axis (per-axis counts proportional to the axis
  extents), the same locations for every image and every call (the paper's default). When the lattice has
  more points than ``N``, ``N`` of them are taken evenly in raster order.
- ``random``: ``N`` distinct locations drawn uniformly per image, on every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SAMPLERS", "auto_border", "crop_extent", "grid_positions", "random_positions"]

SAMPLERS = ("grid", "random")


def auto_border(grid: Sequence[int]) -> tuple[int, ...]:
    """Default border crop in feature cells: the reference's 9 cells, at most an eighth of the axis."""
    return tuple(min(9, g // 8) for g in grid)


def crop_extent(grid: Sequence[int], border: Sequence[int], samples: int, layer: str) -> tuple[int, ...]:
    """Extent of the grid after cropping ``border`` cells on both sides; checks that ``samples`` locations fit.

    Raises:
        ValueError: naming the layer, its grid, the border and the number of samples, with the fix.
    """
    extent = tuple(g - 2 * b for g, b in zip(grid, border))
    if min(extent) < 1 or math.prod(extent) < samples:
        raise ValueError(
            f"layer {layer!r}: feature grid {tuple(grid)} with a border crop of {tuple(border)} cells leaves "
            f"{max(0, math.prod(max(e, 0) for e in extent))} locations, fewer than samples={samples}. Lower the "
            "samples for this layer, lower the border, or feed larger inputs."
        )
    return extent


def _lattice_counts(extent: Sequence[int], samples: int) -> list[int]:
    """Per-axis lattice counts, proportional to the extents, whose product is >= samples."""
    ratio = (samples / math.prod(extent)) ** (1.0 / len(extent))
    counts = [max(1, min(e, round(e * ratio))) for e in extent]
    while math.prod(counts) < samples:
        # refine the axis whose lattice is coarsest and can still take one more point
        axis = max((a for a in range(len(extent)) if counts[a] < extent[a]), key=lambda a: extent[a] / counts[a])
        counts[axis] += 1
    return counts


def grid_positions(grid: Sequence[int], border: Sequence[int], samples: int, layer: str = "?") -> torch.Tensor:
    """Evenly spaced lattice locations inside the border crop.

    Shape:
        returns long ``[samples, d]`` feature-grid indices (the same for every image).
    """
    extent = crop_extent(grid, border, samples, layer)
    counts = _lattice_counts(extent, samples)
    axes = [
        torch.tensor([b + (2 * j + 1) * e // (2 * n) for j in range(n)], dtype=torch.long)
        for b, e, n in zip(border, extent, counts)
    ]
    lattice = torch.cartesian_prod(*axes).view(-1, len(grid))
    total = lattice.shape[0]
    pick = torch.tensor([(2 * j + 1) * total // (2 * samples) for j in range(samples)], dtype=torch.long)
    return lattice[pick]


def random_positions(
    batch: int,
    grid: Sequence[int],
    border: Sequence[int],
    samples: int,
    layer: str = "?",
    *,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``samples`` distinct uniformly drawn locations inside the border crop, independently per image.

    Shape:
        returns long ``[batch, samples, d]`` feature-grid indices.
    """
    extent = crop_extent(grid, border, samples, layer)
    scores = torch.rand(batch, math.prod(extent), generator=generator, device=generator.device if generator else device)
    flat = scores.topk(samples, dim=1).indices  # distinct per row
    coords = []
    for e in reversed(extent):
        coords.append(flat % e)
        flat = flat // e
    offset = torch.tensor(border, dtype=torch.long, device=scores.device)
    return torch.stack(coords[::-1], dim=-1) + offset
