"""The figures of the benchmark report: per-case box plots, data efficiency, means with CIs, learning curves.

Figures use matplotlib's Agg canvas (``Figure`` + ``FigureCanvasAgg``, the global pyplot backend is left alone) and
are written atomically. ``cells`` map ``(variant, fraction)`` to the report's per-cell statistics.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dragsaw._atomic import write_bytes_atomic

from .stats import mean_ci

_DPI = 100
_COLORS = colormaps["tab10"].colors
_LINESTYLES = ("-", "--", ":", "-.")
_CONFIDENCE = 0.95
_CURVE_COLUMN = "val/dice_fg"  # the learning curve: validation Dice per epoch


def _ffrac(fraction: float) -> str:
    return format(fraction, "g")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(buf := io.BytesIO(), format="png", dpi=_DPI)
    return write_bytes_atomic(buf.getvalue(), path)


def _color(variants: Sequence[str], variant: str):
    return _COLORS[variants.index(variant) % len(_COLORS)]


def _plot_boxes(cells: dict, variants: list[str], fractions: list[float], title: str, path: Path) -> Path:
    fig = Figure(figsize=(max(4.0, 1.2 * len(variants) + 1.5) * len(fractions), 4.0), dpi=_DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(fractions), sharey=True, squeeze=False)[0])
    for ax, fraction in zip(axes, fractions):
        data, labels, colors = [], [], []
        for v in variants:
            if (v, fraction) in cells:
                vals = cells[(v, fraction)].case_means("dice_fg")
                if vals.size:
                    data.append(vals)
                    labels.append(v)
                    colors.append(_color(variants, v))
        ax.set_title(f"fraction {_ffrac(fraction)}")
        if not data:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        box = ax.boxplot(data, patch_artist=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
        for patch, color in zip(box["boxes"], colors):
            patch.set_facecolor((*color, 0.5))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("per-case Dice (mean over seeds)")
    fig.suptitle(title)
    return _save(fig, path)


def _plot_efficiency(cells: dict, variants: list[str], fractions: list[float], title: str, path: Path) -> Path:
    fig = Figure(figsize=(6.5, 4.5), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    xs = sorted(fractions)
    for i, v in enumerate(variants):
        pts = [(f, mean_ci(cells[(v, f)].seed_means("dice_fg"), _CONFIDENCE)) for f in xs if (v, f) in cells]
        if not pts:
            continue
        shift = 1.0 + 0.015 * (i - (len(variants) - 1) / 2)  # small multiplicative offset so bars do not overlap
        x = np.array([f * shift for f, _ in pts])
        m = np.array([s[0] for _, s in pts])
        lo = np.array([s[0] - s[1] if not math.isnan(s[1]) else 0.0 for _, s in pts])
        hi = np.array([s[2] - s[0] if not math.isnan(s[2]) else 0.0 for _, s in pts])
        ax.errorbar(x, m, yerr=np.vstack([lo, hi]), marker="o", capsize=3, color=_color(variants, v), label=v)
    if len(xs) > 1 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log")
    ax.set_xticks(xs, [_ffrac(f) for f in xs])
    ax.minorticks_off()
    ax.set_xlabel("training fraction")
    ax.set_ylabel("mean Dice (95% CI over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_means(cells: dict, variants: list[str], fractions: list[float], title: str, path: Path) -> Path:
    fig = Figure(figsize=(max(5.0, 0.6 * len(variants) * len(fractions) + 2.0), 4.5), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    ticks, labels, pos = [], [], 0.0
    for fraction in fractions:
        for v in variants:
            if (v, fraction) not in cells:
                continue
            m, lo, hi, _ = mean_ci(cells[(v, fraction)].seed_means("dice_fg"), _CONFIDENCE)
            err = [[m - lo if not math.isnan(lo) else 0.0], [hi - m if not math.isnan(hi) else 0.0]]
            ax.errorbar([pos], [m], yerr=err, marker="o", capsize=4, color=_color(variants, v))
            ticks.append(pos)
            labels.append(f"{v}\n@{_ffrac(fraction)}")
            pos += 1.0
        pos += 0.5
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylabel("mean Dice (95% CI over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def _plot_curves(curves: dict, variants: list[str], fractions: list[float], title: str, path: Path) -> Path:
    fig = Figure(figsize=(7.0, 4.5), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    for (v, fraction), runs in sorted(curves.items(), key=lambda kv: (variants.index(kv[0][0]), -kv[0][1])):
        epochs = np.array(sorted({e for ep, _ in runs for e in ep}), dtype=np.float64)
        means = []
        for e in epochs:
            means.append(float(np.concatenate([val[ep == e] for ep, val in runs]).mean()))
        style = _LINESTYLES[fractions.index(fraction) % len(_LINESTYLES)]
        ax.plot(epochs, means, linestyle=style, marker="o", markersize=3, color=_color(variants, v),
                label=f"{v} @{_ffrac(fraction)} (n={len(runs)})")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{_CURVE_COLUMN} (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------- report
