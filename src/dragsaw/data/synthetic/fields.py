"""Smooth random fields for the synthetic data: cubic B-spline sampling matrices and a logistic sigmoid."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["sigmoid", "spline_matrix"]


@lru_cache(maxsize=64)
def spline_matrix(n: int, cells: int) -> np.ndarray:
    """``[n, cells + 3]`` cubic B-spline weights sampling a coarse grid of ``cells + 3`` knots at ``n`` points."""
    t = np.linspace(1.0, cells + 1.0 - 1e-9, n)
    i = np.floor(t).astype(int)
    f = t - i
    weights = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], 1) / 6.0
    out = np.zeros((n, cells + 3), dtype=np.float32)
    for j in range(4):
        out[np.arange(n), i - 1 + j] = weights[:, j]
    out.setflags(write=False)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, computed as ``(1 + tanh(x / 2)) / 2`` (no overflow for large ``|x|``)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))
