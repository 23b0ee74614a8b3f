"""The Markdown report of ``dragsaw benchmark``: tables with seed intervals and paired case-level tests, plots.

Inputs (written by the harness into its output folder):

* ``runs.csv``: one row per run (``run, variant, fraction, seed, grid, status, ..., seconds, seconds_per_step``);
* ``results.csv``: one row per run and case (``run, split, case, dice_fg, jaccard_fg, ...`` and optional
  ``auroc_*`` columns);
* ``<run>/log.csv`` per run (optional): the merged Lightning CSV log, for learning curves.

Only runs with ``status == "done"`` enter the statistics; results are joined to runs by the ``run`` column, and
the run's variant, fraction, seed and grid come from ``runs.csv``. Figures come from :mod:`.plots`; every file is
written atomically (temporary file in the destination folder, then ``os.replace``).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dragsaw._atomic import write_bytes_atomic
from dragsaw.errors import DataError

from .plots import _CONFIDENCE, _CURVE_COLUMN, _ffrac, _plot_boxes, _plot_curves, _plot_efficiency, _plot_means
from .stats import holm, mean_ci, paired_comparison

__all__ = ["write_benchmark_report", "DEFAULT_SELECTION_RULE"]

#: The selection-rule line of the report when ``notes`` is empty.
DEFAULT_SELECTION_RULE = (
    "Each run's checkpoint is the epoch with the best validation Dice; the test split is never used for selection."
)

_RUNS_REQUIRED = ("run", "variant", "fraction", "seed", "grid", "status")
_RESULTS_REQUIRED = ("run", "split", "case", "dice_fg", "jaccard_fg")
_ALPHA = 0.05


# ---------------------------------------------------------------------------------------------------- formatting


def _f4(x: float) -> str:
    """A score with 4 decimals; ``n/a`` for NaN."""
    return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"


def _fp(p: float) -> str:
    """A p-value with 3 significant digits (trailing zeros kept); ``n/a`` for NaN."""
    return "n/a" if p is None or math.isnan(p) else format(p, "#.3g")


def _fci(low: float, high: float) -> str:
    """``[low, high]`` with 4 decimals; ``n/a`` when undefined."""
    return "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.4f}, {high:.4f}]"


def _md(text: object) -> str:
    """Escape a value for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _slug(index: int, grid: str) -> str:
    """A file-name-safe, unique name for grid point ``index``."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", grid).strip("_")[:60]
    return f"grid{index}" + (f"_{tail}" if tail else "")


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class _Run:
    run: str
    variant: str
    fraction: float
    seed: int
    grid: str
    status: str
    seconds: float
    seconds_per_step: float
    error: str = ""
    # split -> case -> metric -> value
    results: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def _float_cell(cell: str | None, path: Path, line: int, column: str) -> float:
    cell = (cell or "").strip()
    if not cell or cell.lower() in ("nan", "none", "null"):
        return math.nan
    try:
        return float(cell)
    except ValueError:
        raise DataError(
            f"{path} line {line}, column {column!r}: {cell!r} is not a number; write a number or leave it empty."
        ) from None


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `dragsaw benchmark` into this folder first, or pass its out_dir.")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(
                f"{path} lacks the column(s) {missing} (found {columns}); it must be written by `dragsaw benchmark`."
            )
        reader.fieldnames = columns
        rows = [(line, row) for line, row in enumerate(reader, start=2)]
    return columns, rows


def _read_runs(path: Path) -> list[_Run]:
    _, rows = _read_csv(path, _RUNS_REQUIRED)
    runs = []
    for line, row in rows:
        fraction = _float_cell(row["fraction"], path, line, "fraction")
        seed = _float_cell(row["seed"], path, line, "seed")
        if math.isnan(fraction) or math.isnan(seed) or seed != int(seed):
            raise DataError(
                f"{path} line {line}: fraction {row['fraction']!r} and seed {row['seed']!r} must be a number and an "
                "integer."
            )
        runs.append(_Run(
            run=(row["run"] or "").strip(), variant=(row["variant"] or "").strip(), fraction=fraction, seed=int(seed),
            grid=(row["grid"] or "").strip(), status=(row["status"] or "").strip().lower(),
            seconds=_float_cell(row.get("seconds"), path, line, "seconds"),
            seconds_per_step=_float_cell(row.get("seconds_per_step"), path, line, "seconds_per_step"),
            error=" ".join((row.get("error") or "").split())[:200],
        ))  # fmt: skip
    return runs


def _read_log_curve(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-epoch mean of ``val/dice_fg`` from a run's ``log.csv``; None if absent or without values."""
    if not path.is_file():
        return None
    per_epoch: dict[float, list[float]] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "epoch" not in reader.fieldnames or _CURVE_COLUMN not in reader.fieldnames:
                return None
            for row in reader:
                try:
                    epoch, value = float(row.get("epoch") or "nan"), float(row.get(_CURVE_COLUMN) or "nan")
                except ValueError:
                    continue
                if not (math.isnan(epoch) or math.isnan(value)):
                    per_epoch.setdefault(epoch, []).append(value)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not per_epoch:
        return None
    epochs = np.array(sorted(per_epoch), dtype=np.float64)
    return epochs, np.array([np.mean(per_epoch[e]) for e in epochs], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass
class _Cell:
    """All done runs of one (grid, split, variant, fraction): seed -> case -> metric -> value."""

    seeds: dict[int, dict[str, dict[str, float]]]

    def seed_means(self, metric: str) -> list[float]:
        """Per seed (sorted), the mean of ``metric`` over the run's cases (NaN cases ignored)."""
        out = []
        for seed in sorted(self.seeds):
            vals = np.array([c.get(metric, math.nan) for c in self.seeds[seed].values()], dtype=np.float64)
            out.append(float(np.nanmean(vals)) if vals.size and not np.isnan(vals).all() else math.nan)
        return out

    def case_means(self, metric: str) -> np.ndarray:
        """Per case, the mean of ``metric`` over all seeds (NaN ignored; cases NaN in every seed left out)."""
        cases = sorted({case for per_case in self.seeds.values() for case in per_case})
        out = []
        for case in cases:
            vals = [s[case].get(metric, math.nan) for s in self.seeds.values() if case in s]
            vals = [v for v in vals if not math.isnan(v)]
            if vals:
                out.append(float(np.mean(vals)))
        return np.asarray(out, dtype=np.float64)


def _compare(ref: _Cell, other: _Cell, metric: str = "dice_fg") -> dict:
    """Paired comparison ``other - ref`` over the seeds and cases both hold (:func:`paired_comparison`)."""
    seeds = sorted(set(ref.seeds) & set(other.seeds))
    base = {"n_seeds": len(seeds), "n_cases": 0, "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
            "p_wilcoxon": math.nan}  # fmt: skip
    if not seeds:
        return base
    cases = set.intersection(*(set(ref.seeds[s]) & set(other.seeds[s]) for s in seeds))
    if not cases:
        return base
    table_a = {c: [ref.seeds[s][c].get(metric, math.nan) for s in seeds] for c in sorted(cases)}
    table_b = {c: [other.seeds[s][c].get(metric, math.nan) for s in seeds] for c in sorted(cases)}
    return {**paired_comparison(table_a, table_b), "n_seeds": len(seeds)}


def _verdict(variant: str, fraction: float, ref: str, ref_fraction: float, comp: dict, p_holm: float) -> str:
    """A plain-words statement of one data-efficiency row."""
    who = f"**{variant}** at fraction {_ffrac(fraction)}"
    against = f"{ref} at fraction {_ffrac(ref_fraction)}"
    if comp["n_cases"] == 0:
        return f"{who}: no seeds/cases shared with {against}; not compared."
    diff, low, high = comp["mean_diff"], comp["ci_low"], comp["ci_high"]
    covers = not (math.isnan(low) or math.isnan(high)) and low <= 0.0 <= high
    numbers = f"mean Dice difference {diff:+.4f}, 95% CI {_fci(low, high)}, Holm p {_fp(p_holm)}"
    if not math.isnan(p_holm) and p_holm < _ALPHA:
        word = "significantly worse than" if diff < 0 else "significantly better than"
        return f"{who} is {word} {against} ({numbers})."
    ci_text = "the CI includes 0" if covers else "although the bootstrap CI excludes 0"
    return f"{who} is not significantly different from {against} ({numbers}; {ci_text})."


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _fraction_table(cells: dict, variants: list[str], fraction: float, ref: str) -> list[str]:
    header = ("| variant | seeds | Dice | 95% CI (seeds) | Jaccard | paired seeds | cases | Δ Dice vs "
              f"{_md(ref)} | 95% bootstrap CI | Wilcoxon p | Holm p |")  # fmt: skip
    lines = [header, "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    rows = [v for v in variants if (v, fraction) in cells]
    ref_cell = cells.get((ref, fraction))
    comps = {v: _compare(ref_cell, cells[(v, fraction)]) for v in rows if v != ref and ref_cell is not None}
    names = list(comps)
    adjusted = dict(zip(names, holm([comps[v]["p_wilcoxon"] for v in names]))) if names else {}
    for v in rows:
        cell = cells[(v, fraction)]
        m, lo, hi, n = mean_ci(cell.seed_means("dice_fg"), _CONFIDENCE)
        jac = mean_ci(cell.seed_means("jaccard_fg"), _CONFIDENCE)[0]
        head = f"| {_md(v)} | {n} | {_f4(m)} | {_fci(lo, hi)} | {_f4(jac)} |"
        if v == ref:
            lines.append(head + " – | – | reference | – | – | – |")
        elif v not in comps:
            lines.append(head + " 0 | 0 | n/a (no reference) | n/a | n/a | n/a |")
        else:
            c = comps[v]
            lines.append(
                head + f" {c['n_seeds']} | {c['n_cases']} | {_f4(c['mean_diff'])} | {_fci(c['ci_low'], c['ci_high'])}"
                f" | {_fp(c['p_wilcoxon'])} | {_fp(adjusted[v])} |"
            )
    return lines


def _efficiency_section(cells: dict, variants: list[str], fractions: list[float], ref: str) -> list[str]:
    top = max(fractions)
    ref_cell = cells.get((ref, top))
    if ref_cell is None:
        return [f"No done run of the reference variant {ref} at fraction {_ffrac(top)}; data efficiency not computed."]
    rows = [(v, f) for f in fractions if f < top for v in variants if (v, f) in cells]
    comps = [_compare(ref_cell, cells[key]) for key in rows]
    adjusted = holm([c["p_wilcoxon"] for c in comps]) if comps else []
    lines = [
        f"Each variant at each fraction below {_ffrac(top)} against the reference **{_md(ref)} at fraction "
        f"{_ffrac(top)}**, paired over the same cases (per-case Dice averaged over the paired seeds; Holm across "
        "the rows of this table).",
        "",
        f"| variant | fraction | seeds | Dice | 95% CI (seeds) | Jaccard | paired seeds | cases | Δ Dice vs "
        f"{_md(ref)}@{_ffrac(top)} | 95% bootstrap CI | Wilcoxon p | Holm p |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    verdicts = []
    for (v, f), c, p_adj in zip(rows, comps, adjusted):
        cell = cells[(v, f)]
        m, lo, hi, n = mean_ci(cell.seed_means("dice_fg"), _CONFIDENCE)
        jac = mean_ci(cell.seed_means("jaccard_fg"), _CONFIDENCE)[0]
        lines.append(
            f"| {_md(v)} | {_ffrac(f)} | {n} | {_f4(m)} | {_fci(lo, hi)} | {_f4(jac)} | {c['n_seeds']} | "
            f"{c['n_cases']} | {_f4(c['mean_diff'])} | {_fci(c['ci_low'], c['ci_high'])} | {_fp(c['p_wilcoxon'])} | "
            f"{_fp(p_adj)} |"
        )
        verdicts.append("- " + _verdict(v, f, ref, top, c, p_adj))
    return lines + [""] + verdicts


def _auroc_section(cells: dict, variants: list[str], fractions: list[float], columns: list[str]) -> list[str]:
    present = []
    for col in columns:
        if any(not math.isnan(x) for cell in cells.values() for x in cell.seed_means(col)):
            present.append(col)
    if not present:
        return []
    lines = [
        "Mean per-run AUROC of each uncertainty map (wrong vs right pixels; per run the mean over cases), with the "
        "95% CI over seeds.",
        "",
        "| variant | fraction | " + " | ".join(f"{_md(c)} (mean) | {_md(c)} 95% CI | {_md(c)} seeds" for c in present)
        + " |",
        "|---|---:|" + "---:|---|---:|" * len(present),
    ]
    for f in fractions:
        for v in variants:
            if (v, f) not in cells:
                continue
            parts = []
            for col in present:
                m, lo, hi, n = mean_ci(cells[(v, f)].seed_means(col), _CONFIDENCE)
                parts.append(f"{_f4(m)} | {_fci(lo, hi)} | {n}")
            lines.append(f"| {_md(v)} | {_ffrac(f)} | " + " | ".join(parts) + " |")
    return lines


def _time_section(runs: list[_Run], variants: list[str]) -> list[str]:
    secs = [r.seconds for r in runs if not math.isnan(r.seconds)]
    lines = [
        f"Total training time over all {len(runs)} runs in runs.csv (failed included where recorded): "
        f"{sum(secs):.1f} s ({sum(secs) / 3600:.2f} h); done runs: "
        f"{sum(r.seconds for r in runs if r.status == 'done' and not math.isnan(r.seconds)):.1f} s.",
        "",
        "| grid | variant | fraction | done runs | total s | mean s per run | mean s per step |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[_Run]] = {}
    for r in runs:
        if r.status == "done":
            groups.setdefault((r.grid, r.variant, r.fraction), []).append(r)
    grids = list(dict.fromkeys(r.grid for r in runs))
    for key in sorted(groups, key=lambda k: (grids.index(k[0]), variants.index(k[1]), -k[2])):
        rs = groups[key]
        s = np.array([r.seconds for r in rs], dtype=np.float64)
        sps = np.array([r.seconds_per_step for r in rs], dtype=np.float64)
        mean_s = float(np.nanmean(s)) if not np.isnan(s).all() else math.nan
        mean_sps = float(np.nanmean(sps)) if not np.isnan(sps).all() else math.nan
        lines.append(
            f"| {_md(key[0]) or '(none)'} | {_md(key[1])} | {_ffrac(key[2])} | {len(rs)} | {np.nansum(s):.1f} | "
            f"{'n/a' if math.isnan(mean_s) else f'{mean_s:.1f}'} | "
            f"{'n/a' if math.isnan(mean_sps) else f'{mean_sps:.4f}'} |"
        )
    lines += ["", "<details><summary>Seconds per run</summary>", "", "| run | status | seconds |", "|---|---|---:|"]
    for r in runs:
        lines.append(f"| {_md(r.run)} | {r.status} | {'n/a' if math.isnan(r.seconds) else f'{r.seconds:.1f}'} |")
    return lines + ["", "</details>"]


def write_benchmark_report(out_dir: str | Path, title: str | None = None, notes: str = "") -> Path:
    """Read ``out_dir/runs.csv`` and ``out_dir/results.csv``; write ``out_dir/report.md`` and ``out_dir/plots/``.

    Per grid point (one section per distinct ``grid`` value) and split (``test`` first when present, then
    ``val``), the report holds: a table per training fraction (variant, seeds, Dice mean and 95% t-interval over
    seeds, Jaccard, paired difference against the reference variant with its bootstrap interval, Wilcoxon and
    Holm-adjusted p-values), a data-efficiency table against the reference at the largest fraction, the AUROC
    columns (``auroc_*``) when present, and plots (per-case Dice box plots, Dice vs fraction, mean and CI per
    variant, learning curves from each run's ``log.csv``). Then time per run and in total. Failed runs and done
    runs without results are listed and left out of every statistic.

    The reference variant is ``baseline`` when it has a done run, else the first variant (in ``runs.csv`` order)
    with one. A paired comparison uses the seeds both sides ran (the count is shown) and the cases all of those
    runs evaluated; per-case scores are averaged over those seeds first.

    Args:
        out_dir: The benchmark output folder.
        title: The report heading; default ``"Benchmark report: <folder name>"``.
        notes: Markdown placed under the title, starting with the selection-rule statement (kept as given, so it
            may be several lines, e.g. a bullet list); default :data:`DEFAULT_SELECTION_RULE`.

    Returns:
        The path of ``report.md``.

    Raises:
        DataError: a CSV file is missing, lacks required columns or holds a non-numeric score, or no run is done.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(f"out_dir {out_dir} is not a folder; pass the output folder of `dragsaw benchmark`.")
    if not isinstance(notes, str):
        raise DataError(f"notes must be a string (the selection-rule line), got {type(notes).__name__}.")
    runs_path, results_path = out_dir / "runs.csv", out_dir / "results.csv"
    runs = _read_runs(runs_path)
    res_columns, res_rows = _read_csv(results_path, _RESULTS_REQUIRED)
    auroc_cols = [c for c in res_columns if c.startswith("auroc_")]
    metric_cols = ["dice_fg", "jaccard_fg", *auroc_cols]

    by_name: dict[str, _Run] = {}
    duplicates = []
    for r in runs:
        if r.run in by_name:
            duplicates.append(r.run)
        else:
            by_name[r.run] = r
    unknown: set[str] = set()
    for line, row in res_rows:
        run = by_name.get((row["run"] or "").strip())
        if run is None:
            unknown.add((row["run"] or "").strip())
            continue
        if run.status != "done":
            continue
        split, case = (row["split"] or "").strip(), (row["case"] or "").strip()
        values = {c: _float_cell(row.get(c), results_path, line, c) for c in metric_cols}
        run.results.setdefault(split, {})[case] = values

    done = [r for r in by_name.values() if r.status == "done" and r.results]
    failed = [r for r in by_name.values() if r.status != "done"]
    no_results = [r for r in by_name.values() if r.status == "done" and not r.results]
    if not done:
        raise DataError(
            f"{runs_path} has no run with status 'done' and results in {results_path}; nothing to report "
            "(check the runs' logs for the failures)."
        )
    variants = list(dict.fromkeys(r.variant for r in runs))
    done_variants = [v for v in variants if any(r.variant == v for r in done)]
    ref = "baseline" if "baseline" in done_variants else done_variants[0]
    grids = list(dict.fromkeys(r.grid for r in done))

    title = title or f"Benchmark report: {out_dir.resolve().name}"
    plots = out_dir / "plots"
    lines = [f"# {_md(title)}", "", (notes.strip() or DEFAULT_SELECTION_RULE), ""]
    fractions_all = sorted({r.fraction for r in done}, reverse=True)
    lines += [
        "## Overview",
        "",
        f"- Runs in runs.csv: {len(by_name)}; done with results: {len(done)}; failed: {len(failed)}; done without "
        f"results: {len(no_results)}.",
        f"- Variants: {', '.join(done_variants)}; reference variant: **{ref}**.",
        f"- Training fractions: {', '.join(_ffrac(f) for f in fractions_all)}; grid points: {len(grids)}.",
        "- Dice per seed is the mean over the run's cases; the 95% CI over seeds is a Student-t interval. A paired "
        "difference is `variant - reference` per case (averaged over the seeds both ran), summarised by its mean, a "
        "percentile bootstrap 95% CI (10000 resamples of cases) and a two-sided Wilcoxon signed-rank p-value "
        "(exact for <= 50 non-zero differences without ties, else normal approximation); Holm adjusts across the "
        "rows compared in one table.",
        "",
    ]
    if failed or no_results or duplicates or unknown:
        lines += ["## Failed or missing runs (excluded)", ""]
        lines += [f"- `{_md(r.run)}` ({r.variant}, fraction {_ffrac(r.fraction)}, seed {r.seed}): status "
                  f"{r.status or '(empty)'}" + (f" ({_md(r.error)})" if r.error else "") for r in failed]  # fmt: skip
        lines += [f"- `{_md(r.run)}` ({r.variant}, fraction {_ffrac(r.fraction)}, seed {r.seed}): done but no rows "
                  "in results.csv" for r in no_results]  # fmt: skip
        lines += [f"- `{_md(name)}`: listed more than once in runs.csv; the first row is used" for name in duplicates]
        lines += [f"- `{_md(name)}`: in results.csv but not in runs.csv; ignored" for name in sorted(unknown)]
        lines.append("")

    for gi, grid in enumerate(grids):
        slug = _slug(gi, grid)
        grun = [r for r in done if r.grid == grid]
        splits_present = {s for r in grun for s in r.results}
        splits = [s for s in ("test", "val") if s in splits_present] + sorted(splits_present - {"test", "val"})
        lines += [f"## Grid point: `{_md(grid)}`" if grid else "## Grid point: (none)", ""]
        if "test" not in splits_present:
            lines += ["No test-split results for this grid point; the tables report the val split.", ""]
        for split in splits:
            cells: dict[tuple[str, float], _Cell] = {}
            for r in grun:
                if split in r.results:
                    cell = cells.setdefault((r.variant, r.fraction), _Cell({}))
                    cell.seeds.setdefault(r.seed, r.results[split])
            fractions = sorted({f for _, f in cells}, reverse=True)
            n_cases = len({c for cell in cells.values() for s in cell.seeds.values() for c in s})
            lines += [f"### Split: {split}", "", f"{n_cases} distinct cases.", ""]
            for f in fractions:
                lines += [f"#### Fraction {_ffrac(f)}", "", *_fraction_table(cells, variants, f, ref), ""]
            if len(fractions) > 1:
                lines += [f"#### Data efficiency ({split})", "", *_efficiency_section(cells, variants, fractions, ref),
                          ""]  # fmt: skip
            auroc = _auroc_section(cells, variants, fractions, auroc_cols)
            if auroc:
                lines += [f"#### Uncertainty AUROC ({split})", "", *auroc, ""]
            tag = f"{slug}_{split}"
            figs = [
                ("Per-case Dice (mean over seeds)",
                 _plot_boxes(cells, variants, fractions, f"{split}: per-case Dice", plots / f"{tag}_box.png")),
                ("Mean Dice vs training fraction",
                 _plot_efficiency(cells, variants, fractions, f"{split}: data efficiency",
                                  plots / f"{tag}_efficiency.png")),
                ("Mean Dice and 95% CI per variant",
                 _plot_means(cells, variants, fractions, f"{split}: mean Dice", plots / f"{tag}_means.png")),
            ]  # fmt: skip
            for caption, path in figs:
                lines += [f"![{caption} ({split})]({_rel(path, out_dir)})", ""]
        curves: dict[tuple[str, float], list] = {}
        for r in grun:
            curve = _read_log_curve(out_dir / r.run / "log.csv")
            if curve is not None:
                curves.setdefault((r.variant, r.fraction), []).append(curve)
        lines += ["### Learning curves", ""]
        if curves:
            n_logs = sum(len(v) for v in curves.values())
            path = _plot_curves(curves, variants, fractions_all, f"validation Dice ({grid or 'no grid'})",
                                plots / f"{slug}_curves.png")  # fmt: skip
            lines += [f"`{_CURVE_COLUMN}` per epoch, mean over seeds, from {n_logs} of {len(grun)} runs' log.csv.", "",
                      f"![Learning curves]({_rel(path, out_dir)})", ""]  # fmt: skip
        else:
            lines += [f"No run of this grid point has a log.csv with `{_CURVE_COLUMN}`.", ""]

    lines += ["## Time", "", *_time_section(list(by_name.values()), variants), ""]
    return write_bytes_atomic("\n".join(lines).encode("utf-8"), out_dir / "report.md")
