"""Benchmark tables, learning curves, overlay figures and the Markdown report.

Figures use matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so importing this module never
changes the global pyplot backend. Sizes are fixed (100 dpi, no tight bounding box). Every file is written
atomically: bytes go to a temporary file in the destination folder, which then replaces the destination
(``os.replace``); a failure leaves no partial file and keeps an existing destination unchanged.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from dragsaw._atomic import write_bytes_atomic
from dragsaw.errors import ConfigError, DataError
from dragsaw.metrics import dice_jaccard_consistent

__all__ = [
    "load_epoch_curves", "plot_learning_curves", "plot_overlays", "save_overlay_png", "comparison_table",
    "write_report",
]  # fmt: skip

_DPI = 100
_PANEL_IN = 3.0  # inches per overlay panel
_PALETTE = np.array(colormaps["tab10"].colors) * 255.0  # overlay colour of class c: entry (c - 1) mod 10


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    return write_bytes_atomic(data, path)


def _save_figure(fig: Figure, out_png: Path) -> Path:
    """Render ``fig`` to PNG bytes in memory, then write them atomically."""
    FigureCanvasAgg(fig)
    fig.savefig(buf := io.BytesIO(), format="png", dpi=_DPI)
    return _atomic_write(Path(out_png), buf.getvalue())


def load_epoch_curves(log_csv: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` and average every logged column per epoch.

    The file has one row per logging event and an empty cell wherever a column was not logged. Empty cells are
    skipped; values on rows with an empty ``epoch`` cell cannot be placed and are left out with a warning.

    Args:
        log_csv: The CSV file; it must have an ``epoch`` column.

    Returns:
        ``{column: (epochs, means)}`` for every column but ``epoch``/``step`` with at least one value: the
        sorted epochs and the mean of the column's values in each (float arrays).

    Raises:
        DataError: the file is missing, has no ``epoch`` column, or a cell is not a number (file, line and
            column named).
    """
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        raise DataError(f"learning-curve log {log_csv} does not exist; pass the run's metrics.csv.")
    with log_csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        if "epoch" not in columns:
            raise DataError(f"{log_csv} has no 'epoch' column (columns: {columns}); pass a CSVLogger metrics.csv.")
        per_col: dict[str, dict[float, list[float]]] = {c: {} for c in columns if c not in ("epoch", "step")}
        unplaced = 0
        for line, row in enumerate(reader, start=2):
            values = {}
            for col in (*per_col, "epoch"):
                cell = (row.get(col) or "").strip()
                if cell:
                    try:
                        values[col] = float(cell)
                    except ValueError:
                        raise DataError(f"{log_csv} line {line}, column {col!r}: {cell!r} is not a number.") from None
            epoch = values.pop("epoch", None)
            if epoch is None:
                unplaced += len(values)
                continue
            for col, v in values.items():
                per_col[col].setdefault(epoch, []).append(v)
    if unplaced:
        warnings.warn(f"{log_csv}: {unplaced} value(s) on rows without an epoch were left out of the curves.")
    curves = {}
    for col, per_epoch in per_col.items():
        if per_epoch:
            epochs = np.array(sorted(per_epoch), dtype=np.float64)
            curves[col] = (epochs, np.array([np.mean(per_epoch[e]) for e in epochs], dtype=np.float64))
    return curves


def plot_learning_curves(log_csv: Path, out_png: Path) -> Path:
    """Plot loss terms and validation metrics against epoch from a Lightning CSV log (a 1100 x 400 PNG).

    Left panel: columns whose name contains "loss" or starts with ``train/`` (``train/loss``, ``train/pdcr``,
    ``val/loss``). Right panel: the other ``val/`` columns (``val/dice_fg``). Other columns (learning rate) are
    not drawn; a panel without columns says so. Values are per-epoch means (:func:`load_epoch_curves`).

    Args:
        log_csv: Lightning ``CSVLogger`` ``metrics.csv``.
        out_png: Destination PNG (written atomically; parent folders are created); returned.

    Raises:
        DataError: the log is unreadable (:func:`load_epoch_curves`) or has neither loss nor ``val/`` columns.
    """
    curves = load_epoch_curves(log_csv)
    loss_cols = sorted(c for c in curves if "loss" in c.lower() or c.startswith("train/"))
    val_cols = sorted(c for c in curves if c.startswith("val/") and c not in loss_cols)
    if not loss_cols and not val_cols:
        raise DataError(f"{log_csv} has no loss or 'val/' columns to plot (found {sorted(curves)}).")
    fig = Figure(figsize=(11, 4), dpi=_DPI, layout="constrained")
    for ax, cols, title in zip(fig.subplots(1, 2), (loss_cols, val_cols), ("loss terms", "validation metrics")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not cols:
            ax.text(0.5, 0.5, f"no {title} in the log", ha="center", va="center", transform=ax.transAxes)
            continue
        for col in cols:
            ax.plot(*curves[col], marker="o", markersize=3, label=col)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save_figure(fig, out_png)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
    if not isinstance(x, np.ndarray):
        raise DataError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}.")
    return x


def _to_rgb(image: Any, name: str) -> np.ndarray:
    """Image as float [H, W, 3] in [0, 1] from uint8 [H, W(, 3)] or float [C, H, W] / [H, W] in [0, 1]."""
    a = _to_numpy(image, name)
    if a.dtype == np.uint8 and a.size and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        rgb = a.astype(np.float64) / 255.0
        return np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
    if np.issubdtype(a.dtype, np.floating) and a.size and (a.ndim == 2 or (a.ndim == 3 and a.shape[0] in (1, 3))):
        lo, hi = float(np.min(a)), float(np.max(a))
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also False for NaN
            raise DataError(f"{name} is a float image with values in [{lo}, {hi}]; rescale it to [0, 1] first.")
        a = np.clip(a.astype(np.float64), 0.0, 1.0).reshape(-1, *a.shape[-2:])
        return np.repeat(a, 3 // a.shape[0], axis=0).transpose(1, 2, 0)
    raise DataError(
        f"{name} must be uint8 [H, W, 3] (or [H, W]) or float [C, H, W] with C in (1, 3) in [0, 1], got "
        f"{a.dtype} {a.shape}."
    )


def _to_labels(x: Any, name: str, hw: tuple[int, int]) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.shape != hw or not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool) or (a.size and a.min() < 0):
        raise DataError(f"{name} must be class indices >= 0 of shape {hw} (the image's H, W), got {a.dtype} {a.shape}.")
    return a.astype(np.int64)


def _stretch(unc: np.ndarray, span: float = 0.05) -> tuple[float, float]:
    """Colour limits of one uncertainty map: its 1st and 99th percentiles, at least ``span`` apart and within [0, 1].

    A supervised UAFS head is confident (H near 0) only in part of an image and the rest sits near 1, so a fixed
    [0, 1] scale shows a nearly flat map; the stretch shows where H is lower, and the colour bar keeps the values."""
    low, high = (float(v) for v in np.percentile(unc, [1, 99]))
    if high - low < span:
        middle = 0.5 * (low + high)
        low, high = middle - span / 2, middle + span / 2
    low, high = max(0.0, low), min(1.0, high)
    return (low, high) if high > low else (0.0, 1.0)


def _to_uncertainty(x: Any, name: str, hw: tuple[int, int]) -> np.ndarray:
    a = _to_numpy(x, name).astype(np.float64)
    if a.shape != hw or not (a.min() >= -1e-6 and a.max() <= 1 + 1e-6):  # also False for NaN
        raise DataError(f"{name} must be [H, W] = {hw} with values in [0, 1], got {a.shape} in [{a.min()}, {a.max()}].")
    return np.clip(a, 0.0, 1.0)


def _draw_contours(ax: Any, labels: np.ndarray, color: str, style: str) -> None:
    for c in np.unique(labels):
        mask = labels == c
        if c != 0 and not mask.all():
            ax.contour(mask.astype(np.float64), levels=[0.5], colors=[color], linewidths=1.2, linestyles=style)


def plot_overlays(items: Sequence[Mapping[str, Any]], out_png: Path, max_items: int = 8) -> Path:
    """Draw a grid of cases, one row each: image | ground truth and prediction contours | uncertainty map.

    The middle panel draws every foreground class's ground-truth contour (solid green) and predicted contour
    (dashed red) over the image. The third column, present when some item has an ``"uncertainty"``, shows the
    UAFS uncertainty map, its colours stretched to the map's 1st-99th percentile range (the colour bar gives the
    values). Panels are 300 x 300 px: the PNG is (300 * columns) x
    (300 * rows). 2D only: for 3D pass a middle slice.

    Args:
        items: Dicts with ``"image"`` (uint8 [H, W, 3] or float [C, H, W] in [0, 1]), ``"label"`` and ``"pred"``
            (integer [H, W]), optional ``"uncertainty"`` (float [H, W] in [0, 1]) and ``"case_id"``; numpy
            arrays or torch tensors.
        out_png: Destination PNG (written atomically); returned.
        max_items: The most rows drawn (the first items).

    Raises:
        ConfigError: ``max_items`` is not a positive integer.
        DataError: ``items`` is empty, or an item lacks a key or has a wrong shape, dtype or range (named).
    """
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ConfigError(f"max_items must be a positive integer, got {max_items!r}.")
    if not isinstance(items, Sequence) or len(items) == 0:
        raise DataError("plot_overlays needs a non-empty list of item dicts (image, label, pred).")
    rows = []
    for i, item in enumerate(items[:max_items]):
        missing = [k for k in ("image", "label", "pred") if not isinstance(item, Mapping) or k not in item]
        if missing:
            raise DataError(f"items[{i}] lacks {missing}; each item needs 'image', 'label' and 'pred'.")
        rgb = _to_rgb(item["image"], f"items[{i}]['image']")
        hw = rgb.shape[:2]
        label = _to_labels(item["label"], f"items[{i}]['label']", hw)
        pred = _to_labels(item["pred"], f"items[{i}]['pred']", hw)
        unc = item.get("uncertainty")
        unc = None if unc is None else _to_uncertainty(unc, f"items[{i}]['uncertainty']", hw)
        rows.append((str(item.get("case_id", f"case {i}")), rgb, label, pred, unc))
    ncols = 3 if any(r[4] is not None for r in rows) else 2
    fig = Figure(figsize=(_PANEL_IN * ncols, _PANEL_IN * len(rows)), dpi=_DPI, layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), ncols, squeeze=False))
    for r, (case_id, rgb, label, pred, unc) in enumerate(rows):
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title(case_id, fontsize=9)
        axes[r, 1].imshow(rgb)
        _draw_contours(axes[r, 1], label, "lime", "solid")
        _draw_contours(axes[r, 1], pred, "red", "dashed")
        if r == 0:
            handles = [Line2D([], [], color="lime"), Line2D([], [], color="red", linestyle="--")]
            axes[r, 1].legend(handles, ["ground truth", "prediction"], fontsize=7, loc="upper right")
        if ncols == 3 and unc is None:
            axes[r, 2].text(0.5, 0.5, "no uncertainty map", ha="center", transform=axes[r, 2].transAxes)
            axes[r, 2].axis("off")
        elif ncols == 3:
            low, high = _stretch(unc)
            im = axes[r, 2].imshow(unc, cmap="magma", vmin=low, vmax=high)
            fig.colorbar(im, ax=axes[r, 2], fraction=0.046, pad=0.04, label="uncertainty (this map's range)")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return _save_figure(fig, out_png)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a face neighbour outside it (the image edge is not a boundary)."""
    p = np.pad(mask, 1, mode="edge")
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def save_overlay_png(
    image: Any, pred: Any, out_png: Path, uncertainty: Any | None = None, *, alpha: float = 0.4
) -> Path:
    """Save one case's prediction overlay at the image's native resolution (no axes), as ``predict`` does.

    Each foreground class is tinted with its palette colour at opacity ``alpha`` and outlined in full colour;
    the uncertainty map, if given, is placed to the right (magma colour map, 0 to 1).

    Shape:
        ``image``: uint8 [H, W, 3] / [H, W] or float [C, H, W] / [H, W] in [0, 1]; ``pred``: integer [H, W];
        ``uncertainty``: float [H, W] in [0, 1]. The PNG is W x H, or 2W x H with the uncertainty map.

    Args:
        image, pred, uncertainty: The input image, the predicted class per pixel and the optional map.
        out_png: Destination PNG (written atomically); returned.
        alpha: Tint opacity in [0, 1].

    Raises:
        ConfigError: ``alpha`` is outside [0, 1].
        DataError: an array has the wrong shape, dtype or value range.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}.")
    out = _to_rgb(image, "image") * 255.0
    labels = _to_labels(pred, "pred", out.shape[:2])
    for c in np.unique(labels[labels > 0]):
        mask = labels == c
        colour = _PALETTE[(c - 1) % len(_PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[_boundary(mask)] = colour
    panels = [np.clip(np.rint(out), 0, 255).astype(np.uint8)]
    if uncertainty is not None:
        unc = _to_uncertainty(uncertainty, "uncertainty", out.shape[:2])
        panels.append((colormaps["magma"](unc)[..., :3] * 255).round().astype(np.uint8))
    Image.fromarray(np.concatenate(panels, axis=1), mode="RGB").save(buf := io.BytesIO(), format="PNG")
    return _atomic_write(Path(out_png), buf.getvalue())


def _stat(value: Any) -> tuple[float, float | None, int]:
    """(mean, std or None, n_nan) from a summary mapping or a plain number."""
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise DataError(f"a metric summary needs a 'mean' entry (as from summarize), got keys {sorted(value)}.")
        std = value.get("std")
        return float(value["mean"]), None if std is None else float(std), int(value.get("n_nan", 0))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"a metric value must be a number or a summary dict, got {type(value).__name__}.")
    return float(value), None, 0


def _cell(value: Any, digits: int) -> str:
    mean, std, n_nan = _stat(value)
    text = "n/a" if math.isnan(mean) else f"{mean:.{digits}f}"
    if not math.isnan(mean) and std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    return text + (f" ({n_nan} excl.)" if n_nan else "")


def comparison_table(
    results: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] = ("dice_fg", "jaccard_fg", "accuracy", "hd95_fg"),
    *,
    digits: int = 4,
    flag_inconsistent: bool = True,
) -> str:
    """Format a Markdown table with one row per variant (e.g. baseline, +PDCR, +UAFS, +PDCR+UAFS).

    A cell reads ``mean ± std`` for a :func:`dragsaw.metrics.summarize` entry, or the number alone for a plain
    float (e.g. a published result); ``(k excl.)`` follows when ``k`` cases were NaN (undefined HD95); ``n/a``
    marks a metric the variant lacks or that is NaN in every case. With ``flag_inconsistent``, a variant whose
    mean ``dice_fg``/``jaccard_fg`` cannot be per-case means of one prediction set
    (:func:`dragsaw.metrics.dice_jaccard_consistent`) gets a dagger, explained under the table.

    Args:
        results: ``{variant: {metric key: summary dict or number}}``; fractions, not percentages.
        keys: The metric columns, in order.
        digits: Decimals shown.
        flag_inconsistent: Check every variant's Dice/Jaccard pair.

    Returns:
        The Markdown table (and footnote), ending in a newline.

    Raises:
        ConfigError: ``keys`` is empty or ``digits`` is negative.
        DataError: ``results`` is empty or holds a value that is neither a number nor a summary dict.
    """
    if not keys or isinstance(keys, str):
        raise ConfigError(f"keys must be a non-empty sequence of metric names, got {keys!r}.")
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ConfigError(f"digits must be a non-negative integer, got {digits!r}.")
    if not results:
        raise DataError("comparison_table needs at least one variant in results.")
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    flagged = False
    for variant, metrics in results.items():
        name = str(variant).replace("|", "\\|")
        if flag_inconsistent and "dice_fg" in metrics and "jaccard_fg" in metrics:
            d, j = _stat(metrics["dice_fg"])[0], _stat(metrics["jaccard_fg"])[0]
            if not (math.isnan(d) or math.isnan(j)) and not dice_jaccard_consistent(d, j):
                name, flagged = name + " †", True
        cells = [_cell(metrics[k], digits) if k in metrics else "n/a" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if flagged:
        lines += ["", "† mean Jaccard outside [D/(2-D), D] for mean Dice D: the pair cannot be per-case means of "
                  "one prediction set (per case J = D/(2-D), which is convex)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, title: str, table_md: str, images: Mapping[str, Path], extra_md: str = "") -> Path:
    """Write ``out_dir/report.md`` atomically: the title, the table, one section per image, then ``extra_md``.

    Images are referenced by their path relative to ``out_dir`` (POSIX separators), so the folder can be moved.

    Args:
        out_dir: Folder of the report (created if missing).
        title: The report's heading.
        table_md: A Markdown table, e.g. from :func:`comparison_table`.
        images: ``{caption: png path}`` in display order; every file must exist.
        extra_md: Markdown appended at the end (notes, conventions).

    Returns:
        The path of ``report.md``.

    Raises:
        DataError: an image file does not exist (caption and path named).
    """
    out_dir = Path(out_dir)
    parts = [f"# {title}", "", table_md.rstrip("\n"), ""]
    for caption, path in images.items():
        if not Path(path).is_file():
            raise DataError(f"report image {caption!r} points to {path}, which does not exist; plot it first.")
        rel = Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()
        parts += [f"## {caption}", "", f"![{caption}]({rel})", ""]
    if extra_md:
        parts += [extra_md.rstrip("\n"), ""]
    return _atomic_write(out_dir / "report.md", "\n".join(parts).encode("utf-8"))
