"""Single models against their ensemble, with and without test-time mirroring and largest-component
post-processing, from the ``metrics.json`` files of ``dragsaw evaluate`` (docs/inference.md, "Measured").

Layout read: ``EVAL/s<seed>-<variant>/metrics.json`` (one run per seed) and ``EVAL/ens-<variant>/metrics.json``
(the ensemble of those runs), ``<variant>`` in ``plain, tta, pp, tta-pp, rs, tta-rs`` (``pp``: ``--postprocess largest-component``, ``rs``:
``--postprocess remove-small``; variants without files are left out); each holds the ``val`` and ``test``
splits per case. For every variant and split: mean Dice (foreground), Jaccard and HD95 (for single models the
mean over seeds with its range), and the per-case difference of Dice against the single models without either
option (per case, averaged over seeds), with a 95% bootstrap interval (10,000 resamples, seed 0) and the Wilcoxon
signed-rank p-value. Settings are meant to be chosen on ``val``; ``test`` is reported beside it.

    python benchmarks/inference_variants.py EVAL [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

VARIANTS = ("plain", "tta", "pp", "tta-pp", "rs", "tta-rs")
LABELS = {"plain": "", "tta": " + TTA", "pp": " + largest component", "tta-pp": " + TTA + largest component",
          "rs": " + remove small", "tta-rs": " + TTA + remove small"}


def _load(path: Path, split: str) -> dict[str, dict]:
    return {c["case_id"]: c for c in json.loads(path.read_text())[split]["per_case"]}


def _mean(cases: dict[str, dict], key: str) -> float:
    values = [c[key] for c in cases.values() if c.get(key) is not None and not math.isnan(c[key])]
    return float(np.mean(values)) if values else float("nan")


def _bootstrap(delta: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(n, len(delta)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    root, seeds = Path(args.eval_dir), [int(s) for s in args.seeds.split(",")]
    variants = [v for v in VARIANTS if (root / f"ens-{v}" / "metrics.json").is_file()]
    for split in ("val", "test"):
        singles = {v: [_load(root / f"s{s}-{v}" / "metrics.json", split) for s in seeds] for v in variants}
        ensemble = {v: _load(root / f"ens-{v}" / "metrics.json", split) for v in variants}
        cases = sorted(singles["plain"][0])
        base = np.mean([[run[c]["dice_fg"] for c in cases] for run in singles["plain"]], 0)
        print(f"\n{split} ({len(cases)} cases, seeds {seeds})\n")
        print("| model | Dice | Jaccard | HD95 | ΔDice vs single | 95% bootstrap CI | Wilcoxon p | cases better / worse |")
        print("|---|---:|---:|---:|---:|---|---:|---|")
        rows = [(f"single{LABELS[v]}", singles[v]) for v in variants]
        rows += [(f"ensemble of {len(seeds)}{LABELS[v]}", [ensemble[v]]) for v in variants]
        for name, runs in rows:
            dice = [_mean(r, "dice_fg") for r in runs]
            jac = np.mean([_mean(r, "jaccard_fg") for r in runs])
            hd = np.mean([_mean(r, "hd95_fg") for r in runs])
            spread = f" ({min(dice):.4f}-{max(dice):.4f})" if len(runs) > 1 else ""
            per_case = np.mean([[r[c]["dice_fg"] for c in cases] for r in runs], 0)
            delta = per_case - base
            if np.allclose(delta, 0):
                stats = "0 | - | - | -"
            else:
                lo, hi = _bootstrap(delta)
                p = wilcoxon(delta, zero_method="wilcox").pvalue if np.any(delta != 0) else 1.0
                stats = (f"{delta.mean():+.4f} | [{lo:+.4f}, {hi:+.4f}] | {p:.3g} | "
                         f"{int((delta > 1e-9).sum())} / {int((delta < -1e-9).sum())}")
            print(f"| {name} | {np.mean(dice):.4f}{spread} | {jac:.4f} | {hd:.2f} | {stats} |")


if __name__ == "__main__":
    main()
