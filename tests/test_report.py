"""Tests for dragsaw.report: CSV parsing, figure files, tables, the report and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from dragsaw.errors import ConfigError, DataError
from dragsaw.report import (
    comparison_table,
    load_epoch_curves,
    plot_learning_curves,
    plot_overlays,
    save_overlay_png,
    write_report,
)

# A Lightning CSVLogger-style log: one row per logging event, empty cells elsewhere; lr is not plotted.
LOG = """epoch,step,train/loss,train/pdcr,val/dice_fg,val/loss,lr-Adam,never
0,0,1.0,0.5,,,0.001,
0,1,0.8,,,,,
0,1,,,0.6,0.9,,
1,2,0.5,0.25,,,,
1,3,0.3,0.35,,,,
1,3,,,0.7,0.7,,
"""


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# CSV parsing and learning curves.
def test_load_epoch_curves_skips_empty_cells_and_averages_per_epoch(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text(LOG)
    curves = load_epoch_curves(log)
    assert set(curves) == {"train/loss", "train/pdcr", "val/dice_fg", "val/loss", "lr-Adam"}  # "never" is empty
    epochs, values = curves["train/loss"]
    np.testing.assert_allclose(epochs, [0, 1])
    np.testing.assert_allclose(values, [(1.0 + 0.8) / 2, (0.5 + 0.3) / 2])
    np.testing.assert_allclose(curves["train/pdcr"][1], [0.5, 0.3])
    np.testing.assert_allclose(curves["val/dice_fg"][1], [0.6, 0.7])


def test_rows_without_epoch_are_counted_and_left_out(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,train/loss\n0,0,1.0\n,1,5.0\n,2,7.0\n")
    with pytest.warns(UserWarning, match="2 value"):
        curves = load_epoch_curves(log)
    np.testing.assert_allclose(curves["train/loss"][1], [1.0])


def test_csv_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_epoch_curves(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,train/loss\n0,1.0\n1,abc\n")
    with pytest.raises(DataError, match=r"line 3, column 'train/loss': 'abc'"):
        load_epoch_curves(bad)
    no_epoch = tmp_path / "noepoch.csv"
    no_epoch.write_text("step,train/loss\n0,1.0\n")
    with pytest.raises(DataError, match="no 'epoch' column"):
        load_epoch_curves(no_epoch)


def test_plot_learning_curves_png(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text(LOG)
    out = plot_learning_curves(log, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert _png(out) == (1100, 400)
    assert _no_temp_files(out.parent)


def test_plot_learning_curves_tolerates_missing_columns(tmp_path):
    only_val = tmp_path / "val.csv"
    only_val.write_text("epoch,step,val/dice_fg\n0,1,0.5\n1,3,0.6\n")
    assert _png(plot_learning_curves(only_val, tmp_path / "a.png")) == (1100, 400)
    nothing = tmp_path / "lr.csv"
    nothing.write_text("epoch,step,lr-Adam\n0,0,0.1\n")
    with pytest.raises(DataError, match="no loss or 'val/' columns"):
        plot_learning_curves(nothing, tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


# ----------------------------------------------------------------------------------------------------------------
# Overlay grid.
def _case(h: int = 24, w: int = 32, *, uncertainty: bool = True, torch_arrays: bool = False) -> dict:
    image = np.full((3, h, w), 0.5)  # grey, so pure red or green pixels can only come from the contours
    label = np.zeros((h, w), np.int64)
    label[4:16, 4:20] = 1
    pred = np.zeros((h, w), np.int64)
    pred[8:20, 10:28] = 1
    item = {"image": image, "label": label, "pred": pred, "case_id": "case-a"}
    if uncertainty:
        item["uncertainty"] = np.linspace(0, 1, h * w).reshape(h, w)
    if torch_arrays:
        item = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}
    return item


def _count_colour(path: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    return int((np.abs(a - np.asarray(rgb)).max(-1) <= tol).sum())


def test_overlay_grid_size_and_contours(tmp_path):
    items = [_case(), _case(uncertainty=False, torch_arrays=True)]
    items[1]["image"] = (np.full((24, 32, 3), 128)).astype(np.uint8)
    out = plot_overlays(items, tmp_path / "grid.png")
    assert _png(out) == (900, 600)  # 3 columns x 2 rows of 300 px panels
    assert _count_colour(out, (255, 0, 0)) > 300  # predicted contours (red; the legend alone gives ~30)
    assert _count_colour(out, (0, 255, 0)) > 300  # ground-truth contours (lime; legend ~45)


def test_overlay_grid_without_uncertainty_and_max_items(tmp_path):
    items = [_case(uncertainty=False) for _ in range(3)]
    assert _png(plot_overlays(items, tmp_path / "a.png", max_items=2)) == (600, 600)
    assert _png(plot_overlays(items[:1], tmp_path / "b.png")) == (600, 300)


def test_overlay_grid_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_items"):
        plot_overlays([_case()], tmp_path / "x.png", max_items=0)
    with pytest.raises(DataError, match="non-empty"):
        plot_overlays([], tmp_path / "x.png")
    item = _case()
    item["image"] = item["image"] * 255.0  # forgot to rescale
    with pytest.raises(DataError, match=r"items\[0\]\['image'\].*rescale"):
        plot_overlays([item], tmp_path / "x.png")
    item = _case()
    item["label"] = item["label"][:-1]
    with pytest.raises(DataError, match=r"items\[0\]\['label'\].*\(24, 32\)"):
        plot_overlays([item], tmp_path / "x.png")
    item = _case()
    del item["pred"]
    with pytest.raises(DataError, match=r"items\[0\] lacks \['pred'\]"):
        plot_overlays([item], tmp_path / "x.png")
    item = _case()
    item["uncertainty"] = item["uncertainty"] * 2
    with pytest.raises(DataError, match=r"uncertainty.*\[0, 1\]"):
        plot_overlays([item], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------------------------------------------
# Single-case overlay at native resolution.
def test_save_overlay_png_pixels(tmp_path):
    h, w = 10, 12
    image = np.full((3, h, w), 0.2)
    pred = np.zeros((h, w), np.int64)
    pred[2:8, 3:9] = 1
    out = save_overlay_png(image, pred, tmp_path / "o.png", alpha=0.5)
    assert _png(out) == (w, h)
    with Image.open(out) as im:
        a = np.asarray(im).astype(int)
    colour = np.asarray(colormaps["tab10"].colors[0]) * 255
    np.testing.assert_array_equal(a[0, 0], [51, 51, 51])  # background: the image (0.2 * 255 = 51)
    np.testing.assert_array_equal(a[2, 3], np.rint(colour))  # boundary pixel: the class colour
    np.testing.assert_array_equal(a[4, 5], np.rint(0.5 * 51 + 0.5 * colour))  # interior: tinted


def test_save_overlay_png_with_uncertainty(tmp_path):
    h, w = 8, 9
    unc = np.zeros((h, w))
    unc[:, 5:] = 1.0
    gray = np.full((h, w), 100, np.uint8)
    out = save_overlay_png(gray, np.zeros((h, w), np.int64), tmp_path / "u.png", uncertainty=torch.as_tensor(unc))
    assert _png(out) == (2 * w, h)
    with Image.open(out) as im:
        a = np.asarray(im).astype(int)
    np.testing.assert_array_equal(a[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(a[0, w], np.round(np.asarray(colormaps["magma"](0.0)[:3]) * 255))
    np.testing.assert_array_equal(a[0, w + 6], np.round(np.asarray(colormaps["magma"](1.0)[:3]) * 255))
    with pytest.raises(ConfigError, match="alpha"):
        save_overlay_png(gray, np.zeros((h, w), np.int64), tmp_path / "v.png", alpha=1.5)
    with pytest.raises(DataError, match="pred"):
        save_overlay_png(gray, np.zeros((h, w + 1), np.int64), tmp_path / "v.png")


# ----------------------------------------------------------------------------------------------------------------
# Comparison table.
def test_comparison_table_numbers():
    results = {
        "baseline": {
            "dice_fg": {"mean": 0.81234, "std": 0.04567, "n": 10, "n_nan": 0},
            "jaccard_fg": {"mean": 0.70001, "std": 0.05, "n": 10, "n_nan": 0},
            "hd95_fg": {"mean": 3.25, "std": 1.5, "n": 8, "n_nan": 2},
        },
        "+PDCR|UAFS": {"dice_fg": 0.9, "jaccard_fg": 0.83},
    }
    table = comparison_table(results, keys=("dice_fg", "jaccard_fg", "accuracy", "hd95_fg"))
    assert table.splitlines() == [
        "| variant | dice_fg | jaccard_fg | accuracy | hd95_fg |",
        "|---|---:|---:|---:|---:|",
        "| baseline | 0.8123 ± 0.0457 | 0.7000 ± 0.0500 | n/a | 3.2500 ± 1.5000 (2 excl.) |",
        "| +PDCR\\|UAFS | 0.9000 | 0.8300 | n/a | n/a |",
    ]
    assert comparison_table(results, keys=("dice_fg",), digits=2).splitlines()[2] == "| baseline | 0.81 ± 0.05 |"


def test_comparison_table_flags_impossible_pairs():
    results = {
        "paper ISIC2016": {"dice_fg": 0.9451, "jaccard_fg": 0.8894},  # published pair, METHOD.md section 0
        "ours": {"dice_fg": 0.9, "jaccard_fg": 0.83},
    }
    table = comparison_table(results)
    assert "| paper ISIC2016 † |" in table and "| ours |" in table
    assert "cannot be per-case means" in table
    assert "†" not in comparison_table(results, flag_inconsistent=False)


def test_comparison_table_all_nan_and_errors():
    table = comparison_table({"v": {"hd95_fg": {"mean": float("nan"), "std": float("nan"), "n": 0, "n_nan": 3}}})
    assert "| v | n/a | n/a | n/a | n/a (3 excl.) |" in table
    with pytest.raises(DataError, match="at least one variant"):
        comparison_table({})
    with pytest.raises(ConfigError, match="keys"):
        comparison_table({"v": {}}, keys=())
    with pytest.raises(DataError, match="number or a summary dict"):
        comparison_table({"v": {"dice_fg": "high"}})


# ----------------------------------------------------------------------------------------------------------------
# Report and atomic writes.
def test_write_report_relative_paths(tmp_path):
    plots = tmp_path / "run" / "plots"
    plots.mkdir(parents=True)
    curve = plots / "curves.png"
    Image.new("RGB", (4, 4)).save(curve)
    out = write_report(tmp_path / "run", "ISIC 2016", "| a |\n|---|\n", {"Learning curves": curve}, "Notes.")
    assert out == tmp_path / "run" / "report.md"
    text = out.read_text()
    assert text.startswith("# ISIC 2016\n\n| a |\n|---|\n")
    assert "## Learning curves\n\n![Learning curves](plots/curves.png)\n" in text
    assert text.rstrip().endswith("Notes.")
    assert _no_temp_files(out.parent)


def test_write_report_missing_image(tmp_path):
    with pytest.raises(DataError, match="'curves' points to .*nope.png"):
        write_report(tmp_path, "t", "", {"curves": tmp_path / "nope.png"})
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("stage", ["fsync", "replace"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, stage):
    report = tmp_path / "report.md"
    report.write_text("old report")

    def boom(*args, **kwargs):
        raise OSError(f"disk full during {stage}")

    monkeypatch.setattr(os, stage, boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, "t", "| a |", {})
    with pytest.raises(OSError, match="disk full"):
        save_overlay_png(np.zeros((3, 4, 4)), np.zeros((4, 4), np.int64), tmp_path / "o.png")
    monkeypatch.undo()
    assert report.read_text() == "old report"  # untouched
    assert not (tmp_path / "o.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no temporary files left


def test_failed_render_leaves_no_file(tmp_path, monkeypatch):
    log = tmp_path / "metrics.csv"
    log.write_text(LOG)

    def broken_savefig(self, fname, **kwargs):
        fname.write(b"\x89PNG partial")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_learning_curves(log, tmp_path / "curves.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_sweep_temporaries_removes_only_leftovers_of_atomic_writes(tmp_path):
    from dragsaw._atomic import atomic_dir, atomic_file, sweep_temporaries

    keep = [tmp_path / "last.ckpt", tmp_path / ".hidden.tmp", tmp_path / "notes.tmp", tmp_path / "sub" / "a.nii.gz"]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("complete")
    leftovers = [tmp_path / ".last.ckpt.ab12cd.tmp", tmp_path / "sub" / ".a.nii.gz.q9w8.tmp.nii.gz"]
    for path in leftovers:
        path.write_text("partial")
    stale_dir = tmp_path / ".predictions.zz11.tmp"
    (stale_dir / "inner").mkdir(parents=True)
    (stale_dir / "inner" / "case.nii.gz").write_text("partial")
    removed = sweep_temporaries(tmp_path)
    assert sorted(removed) == sorted([*leftovers, stale_dir])
    assert all(path.read_text() == "complete" for path in keep)
    assert not stale_dir.exists() and not any(path.exists() for path in leftovers)
    assert sweep_temporaries(tmp_path) == [] and sweep_temporaries(tmp_path / "absent") == []
    names = []  # the pattern really is what atomic writes leave behind when killed
    with atomic_dir(tmp_path / "made") as tmp, atomic_file(tmp_path / "m.json") as tmp_file:
        names += [tmp.name, tmp_file.name]
        tmp_file.write_text("{}")
    for name in names:
        (tmp_path / name).write_text("partial")
    assert sorted(p.name for p in sweep_temporaries(tmp_path)) == sorted(names)


def test_uncertainty_colours_are_stretched_to_the_map_and_kept_in_range():
    from dragsaw.report import _stretch

    unc = np.full((50, 50), 0.95)
    unc[:10] = 0.80
    low, high = _stretch(unc)
    assert low == pytest.approx(0.80) and high == pytest.approx(0.95)
    flat = _stretch(np.full((4, 4), 1.0))  # a flat map: at least 0.05 wide, clipped to [0, 1]
    assert flat == (pytest.approx(0.975), 1.0)
    assert _stretch(np.linspace(0, 1, 100)) == (pytest.approx(0.01), pytest.approx(0.99))
