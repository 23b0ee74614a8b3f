"""Tests for dragsaw.benchmark.report: numbers in report.md recomputed independently from a synthetic out_dir."""

from __future__ import annotations

import csv
import itertools
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from dragsaw.benchmark.report import DEFAULT_SELECTION_RULE, write_benchmark_report
from dragsaw.errors import DataError

VARIANTS = ("baseline", "pdcr", "full")
FRACTIONS = (1.0, 0.5)
SEEDS = (1, 2, 3)
CASES = tuple(f"case{i}" for i in range(8))
# per (variant, fraction) shift of every case's Dice relative to baseline at fraction 1
EFFECT = {
    ("baseline", 1.0): 0.0, ("pdcr", 1.0): 0.03, ("full", 1.0): 0.01,
    ("baseline", 0.5): -0.04, ("pdcr", 0.5): 0.0, ("full", 0.5): -0.25,
}  # fmt: skip
FAILED_RUN = "runs/pdcr-f1-s3"
T_975 = {1: 12.706204736174707, 2: 4.302652729911275}  # Student-t 0.975 quantiles (tables)


def run_name(v, f, s):
    return f"runs/{v}-f{f:g}-s{s}"


def make_scores(splits=("val", "test"), seed=7):
    """{(variant, fraction, seed, split, case): dice} with distinct values (no tied paired differences)."""
    rng = np.random.default_rng(seed)
    base = {case: 0.6 + 0.3 * rng.random() for case in CASES}
    scores = {}
    for (v, f), s, split, case in itertools.product(EFFECT, SEEDS, splits, CASES):
        scores[(v, f, s, split, case)] = float(np.clip(base[case] + EFFECT[(v, f)] + rng.normal(0, 0.02), 0, 1))
    return scores


def write_out_dir(root: Path, scores, splits=("val", "test")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    run_cols = ["run", "variant", "fraction", "seed", "grid", "status", "best_epoch", "steps", "seconds",
                "seconds_per_step", "val_dice", "test_dice", "error"]  # fmt: skip
    res_cols = ["run", "variant", "fraction", "seed", "grid", "split", "case", "dice_fg", "jaccard_fg", "accuracy",
                "hd95_fg", "auroc_uafs"]  # fmt: skip
    with open(root / "runs.csv", "w", newline="") as fh_runs, open(root / "results.csv", "w", newline="") as fh_res:
        runs = csv.DictWriter(fh_runs, run_cols)
        res = csv.DictWriter(fh_res, res_cols)
        runs.writeheader()
        res.writeheader()
        for (v, f), s in itertools.product(EFFECT, SEEDS):
            name = run_name(v, f, s)
            status = "failed" if name == FAILED_RUN else "done"
            runs.writerow({"run": name, "variant": v, "fraction": f"{f:g}", "seed": s, "grid": "", "status": status,
                           "best_epoch": 3, "steps": 100, "seconds": 10.0 * s, "seconds_per_step": 0.1 * s,
                           "val_dice": 0.7, "test_dice": "" if "test" not in splits else 0.7,
                           "error": "CUDA out of memory" if status == "failed" else ""})  # fmt: skip
            for split, case in itertools.product(splits, CASES):
                # a failed run's rows hold junk (0.0123) that must not count
                d = scores[(v, f, s, split, case)] if status == "done" else 0.0123
                res.writerow({"run": name, "variant": v, "fraction": f"{f:g}", "seed": s, "grid": "", "split": split,
                              "case": case, "dice_fg": repr(d), "jaccard_fg": repr(d / (2 - d)), "accuracy": 0.99,
                              "hd95_fg": "",
                              "auroc_uafs": "" if v == "baseline" else repr(0.8 + 0.01 * s)})  # fmt: skip
    for v, s in (("baseline", 1), ("baseline", 2), ("pdcr", 1)):
        log = root / run_name(v, 1.0, s) / "log.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        top = 0.65 if v == "baseline" else 0.7
        log.write_text(
            f"epoch,step,train/loss_epoch,val/dice_fg\n0,9,,0.5\n0,9,0.9,\n1,19,,0.6\n1,19,0.7,\n2,29,,{top}\n"
        )
    return root


def exact_wilcoxon(d) -> float:
    """Two-sided exact signed-rank p by enumerating every sign assignment of the ranks (no ties, no zeros)."""
    n = len(d)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    t_obs = ranks[np.asarray(d) > 0].sum()
    totals = np.array([sum(r for r, sg in zip(ranks, signs) if sg) for signs in itertools.product((0, 1), repeat=n)])
    return min(1.0, 2 * min(np.mean(totals <= t_obs), np.mean(totals >= t_obs)))


def section(text: str, start: str, stop: str | None = None) -> str:
    i = text.index(start) + len(start)
    j = text.find(stop, i) if stop else -1
    return text[i:] if j < 0 else text[i:j]


def row(text: str, first: str, second: str | None = None) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first and (second is None or cells[1] == second):
            return cells
    raise AssertionError(f"no table row starting with {first!r} {second!r} in:\n{text}")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    scores = make_scores()
    out = write_out_dir(tmp_path_factory.mktemp("bench"), scores)
    path = write_benchmark_report(out, title="Synthetic")
    return out, path.read_text(encoding="utf-8"), scores


def per_case_mean(scores, v, f, seeds, split="test"):
    return np.array([np.mean([scores[(v, f, s, split, c)] for s in seeds]) for c in CASES])


@pytest.mark.slow
def test_fraction_table_numbers(full_report):
    out, text, scores = full_report
    assert text.startswith("# Synthetic\n")
    test_sec = section(text, "### Split: test", "### Split: val")
    table = section(test_sec, "#### Fraction 1\n", "####")

    # full vs baseline, all three seeds paired
    full = row(table, "full")
    seed_means = [np.mean([scores[("full", 1.0, s, "test", c)] for c in CASES]) for s in SEEDS]
    m, sd = np.mean(seed_means), np.std(seed_means, ddof=1)
    half = T_975[2] * sd / math.sqrt(3)
    assert full[1] == "3" and full[2] == f"{m:.4f}" and full[3] == f"[{m - half:.4f}, {m + half:.4f}]"
    jac = np.mean([np.mean([(lambda d: d / (2 - d))(scores[("full", 1.0, s, "test", c)]) for c in CASES])
                   for s in SEEDS])  # fmt: skip
    assert full[4] == f"{jac:.4f}"
    d_full = per_case_mean(scores, "full", 1.0, SEEDS) - per_case_mean(scores, "baseline", 1.0, SEEDS)
    assert full[5] == "3" and full[6] == "8"
    assert full[7] == f"{d_full.mean():.4f}"
    p_full = exact_wilcoxon(d_full)
    assert full[9] == format(p_full, "#.3g")
    lo, hi = (float(x) for x in full[8].strip("[]").split(","))
    assert lo <= round(d_full.mean(), 4) <= hi

    # pdcr lost seed 3 (failed run): 2 seeds, paired over seeds 1 and 2 only
    pdcr = row(table, "pdcr")
    d_pdcr = per_case_mean(scores, "pdcr", 1.0, (1, 2)) - per_case_mean(scores, "baseline", 1.0, (1, 2))
    assert pdcr[1] == "2" and pdcr[5] == "2"
    assert pdcr[7] == f"{d_pdcr.mean():.4f}"
    p_pdcr = exact_wilcoxon(d_pdcr)
    assert pdcr[9] == format(p_pdcr, "#.3g")
    # Holm over the two non-reference rows, by hand
    small, large = sorted([p_full, p_pdcr])
    adj_small, adj_large = min(1, 2 * small), min(1, max(2 * small, large))
    expected = {p_full: None, p_pdcr: None}
    expected[small], expected[large] = adj_small, adj_large
    assert full[10] == format(expected[p_full], "#.3g") and pdcr[10] == format(expected[p_pdcr], "#.3g")
    assert row(table, "baseline")[7] == "reference"


@pytest.mark.slow
def test_failed_run_listed_and_excluded(full_report):
    out, text, scores = full_report
    failed = section(text, "## Failed or missing runs", "## Grid point")
    assert FAILED_RUN in failed and "status failed (CUDA out of memory)" in failed
    # its junk Dice (0.0123) would pull pdcr's mean far down if it counted
    pdcr = row(section(section(text, "### Split: test", "### Split: val"), "#### Fraction 1\n", "####"), "pdcr")
    seed_means = [np.mean([scores[("pdcr", 1.0, s, "test", c)] for c in CASES]) for s in (1, 2)]
    assert pdcr[2] == f"{np.mean(seed_means):.4f}"


@pytest.mark.slow
def test_data_efficiency(full_report):
    out, text, scores = full_report
    eff = section(text, "#### Data efficiency (test)", "####")
    ref = per_case_mean(scores, "baseline", 1.0, SEEDS)
    pvals = {}
    for v in VARIANTS:
        cells = row(eff, v, "0.5")
        d = per_case_mean(scores, v, 0.5, SEEDS) - ref
        assert cells[8] == f"{d.mean():.4f}"
        pvals[v] = exact_wilcoxon(d)
        assert cells[10] == format(pvals[v], "#.3g")
    # full at 0.5 is 0.25 below on every case: p = 2/256, Holm x3 < 0.05
    assert pvals["full"] == pytest.approx(2 / 256)
    assert "**full** at fraction 0.5 is significantly worse than baseline at fraction 1" in eff
    pdcr_line = next(line for line in eff.splitlines() if line.startswith("- **pdcr** at fraction 0.5"))
    assert "not significantly different" in pdcr_line


@pytest.mark.slow
def test_auroc_selection_rule_and_time(full_report):
    out, text, scores = full_report
    assert DEFAULT_SELECTION_RULE in text
    auroc = section(text, "#### Uncertainty AUROC (test)", "![")
    cells = row(auroc, "full", "1")
    assert cells[2] == f"{np.mean([0.81, 0.82, 0.83]):.4f}" and cells[4] == "3"
    assert row(auroc, "baseline", "1")[2] == "n/a"
    assert row(auroc, "pdcr", "1")[4] == "2"
    time = section(text, "## Time")
    total = sum(10.0 * s for _ in EFFECT for s in SEEDS)
    assert f"{total:.1f} s" in time
    assert row(time, "(none)", "full")[3:6] == ["3", "60.0", "20.0"]


@pytest.mark.slow
def test_plots_exist_are_png_and_linked(full_report):
    out, text, scores = full_report
    links = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    kinds = {Path(link).stem.rsplit("_", 1)[-1] for link in links}
    assert {"box", "efficiency", "means", "curves"} <= kinds
    assert len(links) == 7  # 3 per split x 2 splits + learning curves
    for link in links:
        assert not Path(link).is_absolute()
        w, h = png_size(out / link)
        assert w > 100 and h > 100
    assert not [p for p in (out / "plots").iterdir() if p.name.startswith(".")]  # no temporaries left
    assert "from 3 of 17 runs' log.csv" in text


def test_val_only_results_report_val(tmp_path):
    scores = make_scores(splits=("val",))
    out = write_out_dir(tmp_path / "b", scores, splits=("val",))
    text = write_benchmark_report(out, notes="- Checkpoint: last epoch.\n- Seeds 1-3.").read_text()
    assert "### Split: val" in text and "### Split: test" not in text
    assert "\n- Checkpoint: last epoch.\n- Seeds 1-3.\n" in text and DEFAULT_SELECTION_RULE not in text
    table = section(section(text, "### Split: val"), "#### Fraction 0.5\n", "####")
    d = per_case_mean(scores, "pdcr", 0.5, SEEDS, "val") - per_case_mean(scores, "baseline", 0.5, SEEDS, "val")
    assert row(table, "pdcr")[7] == f"{d.mean():.4f}"


def test_reference_without_baseline(tmp_path):
    scores = make_scores()
    out = write_out_dir(tmp_path / "b", scores)
    for name in ("runs.csv", "results.csv"):
        lines = (out / name).read_text().splitlines(keepends=True)
        (out / name).write_text("".join(line for line in lines if ",baseline," not in line))
    text = write_benchmark_report(out).read_text()
    # first variant in runs.csv order becomes the reference
    assert "reference variant: **pdcr**" in text
    assert row(section(text, "#### Fraction 1\n", "####"), "pdcr")[7] == "reference"


def test_missing_inputs_raise(tmp_path):
    with pytest.raises(DataError, match="runs.csv"):
        write_benchmark_report(tmp_path)
    (tmp_path / "runs.csv").write_text("run,variant\n")
    with pytest.raises(DataError, match="lacks the column"):
        write_benchmark_report(tmp_path)


@pytest.mark.slow
def test_one_section_per_grid_point(tmp_path):
    scores = make_scores()
    out = write_out_dir(tmp_path / "b", scores)
    for name in ("runs.csv", "results.csv"):
        with open(out / name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        extra = []
        for r in rows:
            if r["variant"] != "full":
                r2 = dict(r, run="g2/" + r["run"], grid="pdcr.temperature=0.5;uafs.init_scale=0.01")
                if name == "results.csv" and r2["variant"] == "pdcr":
                    r2["dice_fg"] = repr(float(r2["dice_fg"]) / 2)
                extra.append(r2)
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows + extra)
    text = write_benchmark_report(out).read_text()
    assert text.count("## Grid point:") == 2
    g2 = section(text, "## Grid point: `pdcr.temperature=0.5;uafs.init_scale=0.01`", "## Time")
    table = section(section(g2, "### Split: test"), "#### Fraction 1\n", "####")
    seed_means = [np.mean([scores[("pdcr", 1.0, s, "test", c)] / 2 for c in CASES]) for s in (1, 2)]
    assert row(table, "pdcr")[2] == f"{np.mean(seed_means):.4f}"
    with pytest.raises(AssertionError):
        row(table, "full")  # full ran only without a grid
    links = {line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")}
    # 3 plots x 2 splits per grid point; learning curves only for the first (the g2/ runs have no log.csv)
    assert len(links) == 13 and all((out / link).is_file() for link in links)
    assert "No run of this grid point has a log.csv" in g2
