"""The benchmark harness: variant/grid parsing, nested subsets, equal budgets, resume without repeating runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dragsaw.benchmark.harness import (
    BUILTIN_VARIANTS, BenchmarkPlan, parse_grid, parse_variants, plan_runs, split_top_level,
)
from dragsaw.cli import main
from dragsaw.data import Case, nested_subset
from dragsaw.engine.datamodule import EpochSampler
from dragsaw.errors import ConfigError


def _cases(n: int) -> list[Case]:
    return [Case(f"c{i:03d}", Path(f"/x/{i}.png"), Path(f"/x/{i}_m.png")) for i in range(n)]


# ---------------------------------------------------------------- parsing
def test_split_top_level_keeps_brackets_whole():
    assert split_top_level("1,[2, 3],{a: 4, b: 5}, x") == ["1", "[2, 3]", "{a: 4, b: 5}", "x"]
    assert split_top_level("a=1;b=[1;2]", ";") == ["a=1", "b=[1;2]"]


def test_parse_variants_builtin_and_custom():
    variants = parse_variants("baseline,full", ["full-ramp:full;pdcr.ramp_epochs=5", "t:pdcr.temperature=0.5"])
    assert [v.name for v in variants] == ["baseline", "full", "full-ramp", "t"]
    assert list(variants[2].overrides) == [*BUILTIN_VARIANTS["full"], "pdcr.ramp_epochs=5"]
    assert variants[3].overrides == ("pdcr.temperature=0.5",)


@pytest.mark.parametrize("names, custom, fragment", [
    ("baseline,fulll", None, "unknown variant 'fulll'"),
    ("", ["noequals"], "must look like NAME:KEY=VALUE"),
    ("", ["x:oops"], "neither KEY=VALUE nor a built-in"),
    ("baseline,baseline", None, "given twice"),
    ("", ["a b:pdcr.enabled=true"], "only letters"),
    ("", None, "no variants"),
])
def test_parse_variants_errors(names, custom, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_variants(names, custom)


def test_parse_grid_is_the_cross_product():
    points = parse_grid(["pdcr.temperature=0.5,1", "pdcr.patch_sizes=[5,7],[9]"])
    assert points == [
        ("pdcr.temperature=0.5", "pdcr.patch_sizes=[5,7]"), ("pdcr.temperature=0.5", "pdcr.patch_sizes=[9]"),
        ("pdcr.temperature=1", "pdcr.patch_sizes=[5,7]"), ("pdcr.temperature=1", "pdcr.patch_sizes=[9]"),
    ]
    assert parse_grid(None) == [()]
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["pdcr.temperature"])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["a.b=1", "a.b=2"])


# ---------------------------------------------------------------- subsets and budget
def test_nested_subsets_are_nested_seeded_and_order_free():
    cases = _cases(40)
    for seed in range(5):
        small, half, full = (set(c.case_id for c in nested_subset(cases, f, seed)) for f in (0.25, 0.5, 1.0))
        assert len(small) == 10 and len(half) == 20 and len(full) == 40
        assert small < half < full
        shuffled = list(reversed(cases))
        assert {c.case_id for c in nested_subset(shuffled, 0.25, seed)} == small
    a, b = ({c.case_id for c in nested_subset(cases, 0.25, s)} for s in (0, 1))
    assert a != b  # another seed, another subset
    assert len(nested_subset(cases[:3], 0.01, 0)) == 1  # never empty
    with pytest.raises(ConfigError, match="train_fraction"):
        nested_subset(cases, 0.0, 0)


def test_epoch_sampler_with_a_fixed_budget_visits_every_case_once_per_pass():
    dataset = list(range(6))
    sampler = EpochSampler(dataset, seed=3, generator=torch.Generator(), num_samples=16)
    order = list(iter(sampler))
    assert len(order) == len(sampler) == 16
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:12]) == list(range(6))
    sampler.set_epoch(1)
    assert list(iter(sampler)) != order
    sampler.set_epoch(0)
    assert list(iter(sampler)) == order  # (seed, epoch) alone decide the order


def test_plan_gives_every_run_the_same_budget_and_paired_seeds(tmp_path):
    plan = BenchmarkPlan(preset="folder", profile="cpu", data_root=str(tmp_path), variants=parse_variants("baseline,full"),
                         fractions=[1.0, 0.25], seeds=[0, 1], iterations_per_epoch=7,
                         grid=parse_grid(["pdcr.temperature=0.5,1"]))
    runs = plan_runs(plan)
    assert len(runs) == 2 * 2 * 2 * 2
    assert {r.config.train.iterations_per_epoch for r in runs} == {7}
    assert {r.config.train.epochs for r in runs} == {runs[0].config.train.epochs}
    for r in runs:
        assert r.config.train.seed == r.config.data.subset_seed == r.seed
        assert r.config.data.train_fraction == r.fraction
        assert r.config.pdcr.enabled == (r.variant == "full")
    assert {r.config.pdcr.temperature for r in runs} == {0.5, 1.0}
    bad = BenchmarkPlan(preset="folder", profile="cpu", data_root=str(tmp_path),
                        variants=parse_variants(None, ["x:pdcr.temprature=1"]))
    with pytest.raises(ConfigError, match="variant 'x'.*temprature"):
        plan_runs(bad)


# ---------------------------------------------------------------- end to end (tiny)
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke"
    assert main(["benchmark", "--smoke", "--out", str(out)]) == 0
    return out


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_smoke_benchmark_writes_runs_results_and_report(smoke):
    runs = _rows(smoke / "runs.csv")
    assert len(runs) == 8 and {r["status"] for r in runs} == {"done"}
    assert {r["steps"] for r in runs} == {runs[0]["steps"]}  # the same budget at fraction 0.5 and 1
    results = _rows(smoke / "results.csv")
    test_cases = {r["case"] for r in results if r["split"] == "test"}
    assert len(results) == 8 * (len(test_cases) + len({r["case"] for r in results if r["split"] == "val"}))
    # every run's mean equals the mean of its case rows (what an independent check recomputes)
    for run in runs:
        dice = [float(r["dice_fg"]) for r in results if r["run"] == run["run"] and r["split"] == "test"]
        assert float(run["test_dice"]) == pytest.approx(sum(dice) / len(dice), abs=1e-9)
    # nested subsets written to the runs, shared by the variants of a seed
    for seed in (0, 1):
        half = {v: json.loads((smoke / f"runs/default/{v}-f0.5-s{seed}/subset.json").read_text())["cases"]
                for v in ("baseline", "full")}
        assert half["baseline"] == half["full"]
        splits = json.loads((smoke / f"runs/default/baseline-f1-s{seed}/splits.json").read_text())["splits"]
        assert set(half["baseline"]) < set(splits["train"])
        assert not (smoke / f"runs/default/baseline-f1-s{seed}/subset.json").exists()
    report = (smoke / "report.md").read_text()
    assert "never used for selection" in report and "Wilcoxon" in report
    assert all((smoke / "plots" / p).stat().st_size > 0 for p in ("grid0_curves.png", "grid0_test_box.png"))


@pytest.mark.slow
def test_rerun_repeats_no_finished_run_and_resumes_an_interrupted_one(smoke, capsys):
    done = smoke / "runs/default/full-f1-s1"
    untouched = smoke / "runs/default/baseline-f1-s0/metrics.json"
    stamp = untouched.stat().st_mtime_ns
    steps_before = json.loads((done / "metrics.json").read_text())["global_steps"]
    (done / "metrics.json").unlink()  # as if killed after its last checkpoint, before the final evaluation
    assert main(["benchmark", "--smoke", "--out", str(smoke)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("resuming") == 1 and "training" not in printed
    assert untouched.stat().st_mtime_ns == stamp
    assert json.loads((done / "metrics.json").read_text())["global_steps"] == steps_before
    assert len(_rows(smoke / "runs.csv")) == 8


@pytest.mark.slow
def test_rerun_with_other_base_settings_is_refused(smoke, tmp_path):
    saved = json.loads((smoke / "benchmark.json").read_text())
    plan = BenchmarkPlan(preset="folder", profile="cpu", data_root=saved["data_root"],
                         overrides=[*saved["overrides"], "train.lr=0.5"], variants=parse_variants("baseline"),
                         seeds=[0], iterations_per_epoch=saved["iterations_per_epoch"])
    from dragsaw.benchmark.harness import _load_or_save_plan

    with pytest.raises(ConfigError, match="not comparable"):
        _load_or_save_plan(plan, smoke)


@pytest.mark.slow
def test_a_run_chosen_on_val_is_scored_on_test_later_without_retraining(smoke, capsys):
    run = smoke / "runs/default/full-f0.5-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    expected = [c["dice_fg"] for c in metrics["test"]["per_case"]]
    stamp = (run / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    del metrics["test"]  # as a run trained with --splits val leaves it
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["benchmark", "--smoke", "--out", str(smoke)]) == 0
    printed = capsys.readouterr().out
    assert "full-f0.5-s0: its best checkpoint evaluated on test" in printed
    assert "training" not in printed and "resuming" not in printed
    scored = json.loads((run / "metrics.json").read_text())["test"]["per_case"]
    assert [c["dice_fg"] for c in scored] == pytest.approx(expected, abs=1e-6)
    assert (run / "checkpoints" / "best.ckpt").stat().st_mtime_ns == stamp
