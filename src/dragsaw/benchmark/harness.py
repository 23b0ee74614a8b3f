"""The runs of ``dragsaw benchmark``: variants x training fractions x seeds x grid points, resumable.

Layout of an output folder::

    benchmark.json          the plan (preset, profile, data root, overrides, budget) that every rerun must match
    runs/<grid>/<variant>-f<fraction>-s<seed>/   one ordinary run directory each (config.yaml, checkpoints, ...)
    runs.csv, results.csv   derived from the run directories after every run (a row per run / per run and case)
    report.md, plots/       statistics over seeds and paired comparisons (:mod:`dragsaw.benchmark.report`)

Every run gets the same budget: ``train.epochs`` epochs of ``train.iterations_per_epoch`` steps, the latter set by
default to one pass over the *full* training split, so a run on 25% of the cases takes as many optimizer steps as
one on all of them. Training subsets are nested and seeded by the run's seed (:func:`dragsaw.data.nested_subset`):
every variant of one seed sees the same cases, which is what makes per-case comparisons paired.

A rerun with the same ``--out`` skips finished runs, resumes interrupted ones from their last checkpoint and starts
the missing ones; more seeds, variants, fractions or grid values may be added this way.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import platform
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._atomic import write_csv_atomic, write_json_atomic
from ..config import RunConfig, apply_overrides, load_preset
from ..demo import variant_overrides
from ..errors import ConfigError, DragsawError

__all__ = [
    "BUILTIN_VARIANTS", "Variant", "BenchmarkPlan", "RunSpec", "parse_variants", "parse_grid", "split_top_level",
    "plan_runs", "run_benchmark", "collect_results", "full_training_steps", "smoke_plan",
]

BUILTIN_VARIANTS: dict[str, list[str]] = {
    name: variant_overrides(demo_name)
    for name, demo_name in (("baseline", "baseline"), ("pdcr", "+PDCR"), ("uafs", "+UAFS"), ("full", "+PDCR+UAFS"))
}
"""Variant name -> the ``--set`` overrides that switch the two modules (the rest of the config is the preset's)."""

_SELECTION = ("Each run's checkpoint is the epoch with the best validation Dice (foreground, mean over validation "
              "cases); the test split is never used for selection.")
_PLAN_KEYS = ("preset", "profile", "data_root", "extra_root", "overrides", "iterations_per_epoch")
_STANDARD = ("dice_fg", "jaccard_fg", "accuracy", "hd95_fg")


@dataclass(frozen=True)
class Variant:
    """A named set of ``--set`` overrides applied on top of the benchmark's configuration."""

    name: str
    overrides: tuple[str, ...]


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` at ``sep`` outside brackets and braces: ``"1,[2,3],{a: 4}"`` -> ``["1", "[2,3]", "{a: 4}"]``."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _check_name(name: str, what: str) -> str:
    if not name or not all(c.isalnum() or c in "-_+." for c in name):
        raise ConfigError(f"{what} name {name!r} must be non-empty and use only letters, digits and - _ + . (it names "
                          "folders); e.g. full-ramp.")
    return name


def parse_variants(names: str | None, custom: list[str] | None = None) -> list[Variant]:
    """Variants from ``--variants a,b,...`` (built-in names) and repeated ``--variant NAME:KEY=V[;KEY=V...]``.

    Built-ins: ``baseline``, ``pdcr``, ``uafs``, ``full`` (:data:`BUILTIN_VARIANTS`). A custom variant's overrides
    apply on top of the benchmark's config as given (start them with ``pdcr.enabled=...``/``uafs.enabled=...`` to
    fix the modules); a custom name may also extend a built-in: ``--variant full-ramp:full;pdcr.ramp_epochs=5``.

    Raises:
        ConfigError: an unknown built-in name (with the valid ones), a malformed custom variant, a duplicate name.
    """
    variants: list[Variant] = []
    for name in [n.strip() for n in (names or "").split(",") if n.strip()]:
        if name not in BUILTIN_VARIANTS:
            raise ConfigError(f"unknown variant {name!r} in --variants; built-in variants are "
                              f"{', '.join(BUILTIN_VARIANTS)}; define others with --variant NAME:KEY=VALUE;KEY=VALUE.")
        variants.append(Variant(name, tuple(BUILTIN_VARIANTS[name])))
    for item in custom or []:
        name, sep, body = item.partition(":")
        if not sep or not body.strip():
            raise ConfigError(f"--variant {item!r} must look like NAME:KEY=VALUE[;KEY=VALUE...], e.g. "
                              "full-ramp:full;pdcr.ramp_epochs=5.")
        overrides: list[str] = []
        for part in [p.strip() for p in split_top_level(body, ";") if p.strip()]:
            if part in BUILTIN_VARIANTS:
                overrides += BUILTIN_VARIANTS[part]
            elif "=" in part:
                overrides.append(part)
            else:
                raise ConfigError(f"--variant {item!r}: {part!r} is neither KEY=VALUE nor a built-in variant "
                                  f"({', '.join(BUILTIN_VARIANTS)}).")
        variants.append(Variant(_check_name(name.strip(), "variant"), tuple(overrides)))
    seen = [v.name for v in variants]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ConfigError(f"variant name(s) {dupes} given twice; give each variant once.")
    if not variants:
        raise ConfigError("no variants: pass --variants baseline,full (or others) and/or --variant NAME:KEY=VALUE.")
    return variants


def parse_grid(items: list[str] | None) -> list[tuple[str, ...]]:
    """Grid points, the cross product of ``--grid key=v1,v2,...`` items: each point a tuple of ``key=value``.

    Values are split at top-level commas (``pdcr.patch_sizes=[5,7],[9]`` has two values). No items: one empty point.

    Raises:
        ConfigError: an item without ``=`` or without values, or a key given twice.
    """
    axes: list[list[str]] = []
    keys: list[str] = []
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        options = [v for v in split_top_level(values) if v] if sep else []
        if not key or not options:
            raise ConfigError(f"--grid {item!r} must look like KEY=V1,V2,..., e.g. pdcr.temperature=0.5,1.0.")
        if key in keys:
            raise ConfigError(f"--grid names {key!r} twice; give all its values in one --grid {key}=V1,V2,...")
        keys.append(key)
        axes.append([f"{key}={v}" for v in options])
    return [tuple(point) for point in itertools.product(*axes)] if axes else [()]


def _fraction_label(fraction: float) -> str:
    return f"{fraction:g}"


def _grid_label(point: tuple[str, ...]) -> str:
    return ";".join(point)


def _grid_folder(point: tuple[str, ...]) -> str:
    if not point:
        return "default"
    text = "_".join(point)
    return "".join(c if c.isalnum() or c in "-_.=" else "-" for c in text)[:120]


@dataclass
class BenchmarkPlan:
    """What a benchmark runs; saved as ``benchmark.json`` (the keys in ``_PLAN_KEYS`` must match on a rerun)."""

    preset: str
    profile: str | None
    data_root: str | None
    extra_root: str | None = None
    overrides: list[str] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    grid: list[tuple[str, ...]] = field(default_factory=lambda: [()])
    eval_splits: tuple[str, ...] = ("val", "test")
    iterations_per_epoch: int | None = None

    def base_config(self) -> RunConfig:
        """The preset (and profile) with the data root and the common overrides."""
        config = load_preset(self.preset, self.profile)
        if self.data_root:
            config.data.root = str(Path(self.data_root).resolve())
        if self.extra_root:
            config.data.extra_root = str(Path(self.extra_root).resolve())
        return apply_overrides(config, list(self.overrides))

    def to_json(self) -> dict:
        payload = asdict(self)
        payload["variants"] = [{"name": v.name, "overrides": list(v.overrides)} for v in self.variants]
        payload["grid"] = [list(p) for p in self.grid]
        payload["eval_splits"] = list(self.eval_splits)
        return payload


@dataclass(frozen=True)
class RunSpec:
    """One run of a benchmark: where it goes and its resolved configuration."""

    name: str  # relative run directory
    variant: str
    fraction: float
    seed: int
    grid: str
    config: RunConfig


def _check_plan(plan: BenchmarkPlan) -> None:
    for f in plan.fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise ConfigError(f"--fractions must hold numbers in (0, 1], got {f!r}; e.g. --fractions 1,0.25.")
    if len(set(plan.fractions)) != len(plan.fractions):
        raise ConfigError(f"--fractions lists a value twice: {plan.fractions}.")
    if not plan.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in plan.seeds):
        raise ConfigError(f"seeds must be ints >= 0, got {plan.seeds!r}; e.g. --seeds 3 for seeds 0, 1, 2.")
    bad = [s for s in plan.eval_splits if s not in ("val", "test")]
    if bad or "val" not in plan.eval_splits:
        raise ConfigError(f"--splits must be val or val,test, got {','.join(plan.eval_splits)}; validation is always "
                          "evaluated because checkpoints are selected on it.")


def full_training_steps(config: RunConfig) -> int:
    """One pass over the whole training split at ``train.batch_size`` (the per-epoch budget of every run)."""
    from ..engine.datamodule import cases_for

    full = apply_overrides(config, ["data.train_fraction=1.0"])
    splits = cases_for(full, None, verify=False)
    n, b = len(splits["train"]), config.train.batch_size
    if n == 0:
        raise ConfigError(f"the dataset at {config.data.root} has no training cases.")
    return max(1, n // b)


def plan_runs(plan: BenchmarkPlan, base: RunConfig | None = None) -> list[RunSpec]:
    """Every run of ``plan`` with its configuration (checked now, so a bad value fails before any training).

    Order: grid point, then seed, then fraction, then variant, so that an interrupted benchmark has complete paired
    sets for the seeds it finished.

    Raises:
        ConfigError: a bad override in a variant or grid point (the variant or point is named).
    """
    _check_plan(plan)
    base = plan.base_config() if base is None else base  # ``base``: the plan's base config, when already built
    runs = []
    for point in plan.grid:
        for seed in plan.seeds:
            for fraction in plan.fractions:
                for variant in plan.variants:
                    name = f"runs/{_grid_folder(point)}/{variant.name}-f{_fraction_label(fraction)}-s{seed}"
                    extra = [f"data.train_fraction={float(fraction)}", f"data.subset_seed={seed}",
                             f"train.seed={seed}", f"name={variant.name}-f{_fraction_label(fraction)}-s{seed}"]
                    if plan.iterations_per_epoch is not None:
                        extra.append(f"train.iterations_per_epoch={plan.iterations_per_epoch}")
                    try:
                        config = apply_overrides(base, [*variant.overrides, *point, *extra])
                    except ConfigError as exc:
                        raise ConfigError(f"variant {variant.name!r}{' at grid point ' + _grid_label(point) if point else ''}: "
                                          f"{exc}") from exc
                    runs.append(RunSpec(name, variant.name, float(fraction), seed, _grid_label(point), config))
    return runs


def _load_or_save_plan(plan: BenchmarkPlan, out: Path) -> None:
    path = out / "benchmark.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); restore it or use another --out.") from exc
        mine = plan.to_json()
        for key in _PLAN_KEYS:
            if saved.get(key) != mine.get(key):
                raise ConfigError(
                    f"{out} holds a benchmark with {key}={saved.get(key)!r}, but this command gives {mine.get(key)!r}; "
                    "runs with different settings are not comparable. Repeat the original command to continue it, "
                    "or choose another --out."
                )
        # variants, fractions, seeds and grid may grow: record the union
        for key in ("variants", "fractions", "seeds", "grid"):
            merged = list(saved.get(key, []))
            merged += [item for item in mine[key] if item not in merged]
            mine[key] = merged
        write_json_atomic(mine, path)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan.to_json(), path)


def _best_epoch(log: Path) -> int | None:
    if not log.is_file():
        return None
    best, epoch = -math.inf, None
    with open(log, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get("val/dice_fg")
            if value:
                if float(value) > best:
                    best, epoch = float(value), int(float(row["epoch"]))
    return epoch


def _run_state(run_dir: Path) -> str:
    if (run_dir / "metrics.json").is_file():
        return "done"
    if (run_dir / "failed.json").is_file():
        return "failed"
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "interrupted"
    return "missing" if not run_dir.exists() else "empty"


def _execute(spec: RunSpec, out: Path, eval_splits: tuple[str, ...], progress: bool) -> str:
    from ..engine import train
    from ..engine.task import NonFiniteLossError

    run_dir = out / spec.name
    state = _run_state(run_dir)
    if state in ("done", "failed"):
        return state
    if state == "empty":  # killed before its first checkpoint: nothing worth keeping
        shutil.rmtree(run_dir)
    timing = run_dir / "timing.json"
    before = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
    t0 = time.perf_counter()
    try:
        train(spec.config, run_dir, resume=state == "interrupted", progress=progress, eval_splits=eval_splits)
    except NonFiniteLossError as exc:  # a diverged run is a result (reported as failed), not a reason to stop
        write_json_atomic({"error": str(exc)}, run_dir / "failed.json")
        return "failed"
    finally:
        if run_dir.is_dir():
            write_json_atomic({"seconds": before + time.perf_counter() - t0}, timing)
    return "done"


@contextlib.contextmanager
def _claim(out: Path, spec: RunSpec):
    """Hold an exclusive lock on ``spec``'s run while it trains; yields False when another process holds it.

    The lock is ``fcntl.flock`` on ``out/locks/<run>.lock``: the kernel releases it when its holder exits, however
    it exits, so a killed benchmark never leaves a run claimed. Several processes running the same benchmark
    command therefore share its runs (each takes the next unclaimed one).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no sharing between processes, one process runs everything
        yield True
        return
    locks = out / "locks"
    locks.mkdir(exist_ok=True)
    path = locks / (spec.name.replace("/", "__") + ".lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _add_missing_splits(spec: RunSpec, out: Path, eval_splits: tuple[str, ...]) -> list[str]:
    """Evaluate a finished run's best checkpoint on the splits it was not evaluated on (e.g. the test split after
    settings were chosen with ``--splits val``), adding them to its ``metrics.json``; returns the splits added.

    Nothing is retrained: the checkpoint chosen on validation data is the one scored."""
    from ..engine import evaluate_run

    path = out / spec.name / "metrics.json"
    metrics = json.loads(path.read_text())
    missing = [s for s in eval_splits if s not in metrics]
    if not missing:
        return []
    scored = evaluate_run(out / spec.name, out=out / spec.name / "evaluation", splits=tuple(missing))
    for split in missing:
        metrics[split] = scored[split]
    write_json_atomic(metrics, path)
    return missing


def collect_results(specs: list[RunSpec], out: Path) -> tuple[int, int]:
    """(Re)write ``runs.csv`` and ``results.csv`` from the run directories of ``specs``.

    Returns:
        (runs done, runs failed).
    """
    runs, results, extra_keys = [], [], []
    for spec in specs:
        run_dir = out / spec.name
        state = _run_state(run_dir)
        if state not in ("done", "failed"):
            continue
        ident = {"run": spec.name, "variant": spec.variant, "fraction": _fraction_label(spec.fraction),
                 "seed": spec.seed, "grid": spec.grid}
        timing = run_dir / "timing.json"
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        if state == "failed":
            error = json.loads((run_dir / "failed.json").read_text()).get("error", "")
            runs.append({**ident, "status": "failed", "seconds": f"{seconds:.1f}", "error": error[:300]})
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        row = {**ident, "status": "done", "best_epoch": _best_epoch(run_dir / "log.csv"),
               "steps": metrics.get("global_steps"), "seconds": f"{seconds:.1f}",
               "seconds_per_step": metrics.get("seconds_per_step")}
        for split in ("val", "test"):
            if split in metrics:
                row[f"{split}_dice"] = metrics[split]["mean"]["dice_fg"]["mean"]
                for case in metrics[split]["per_case"]:
                    numbers = {k: v for k, v in case.items() if k != "case_id" and isinstance(v, (int, float))}
                    extra_keys += [k for k in numbers if k not in _STANDARD and k not in extra_keys]
                    results.append({**ident, "split": split, "case": case["case_id"], **numbers})
        runs.append(row)
    run_fields = ["run", "variant", "fraction", "seed", "grid", "status", "best_epoch", "steps", "seconds",
                  "seconds_per_step", "val_dice", "test_dice", "error"]
    write_csv_atomic(runs, run_fields, out / "runs.csv")
    result_fields = ["run", "variant", "fraction", "seed", "grid", "split", "case", *_STANDARD, *extra_keys]
    write_csv_atomic(results, result_fields, out / "results.csv")
    done = sum(r["status"] == "done" for r in runs)
    return done, len(runs) - done


def _notes(plan: BenchmarkPlan, specs: list[RunSpec], command: str | None) -> str:
    import torch

    config = specs[0].config
    tc = config.train
    steps = tc.epochs * (tc.iterations_per_epoch or 0)
    budget = (f"{tc.epochs} epochs x {tc.iterations_per_epoch} steps of batch {tc.batch_size} = {steps} optimizer "
              "steps per run, whatever the training fraction" if tc.iterations_per_epoch else
              f"{tc.epochs} epochs of batch {tc.batch_size} per run")
    lines = [
        f"- Selection: {_SELECTION}",
        f"- Budget: {budget}; host {config.model.name}, input {config.data.input_size}.",
        f"- Preset `{plan.preset}`" + (f", profile `{plan.profile}`" if plan.profile else "")
        + f"; data root `{plan.data_root}`; common overrides: {plan.overrides or 'none'}.",
        "- Variants: " + "; ".join(f"`{v.name}` = {' '.join(v.overrides) or '(preset as is)'}" for v in plan.variants),
        f"- Seeds {plan.seeds} (training seed = subset seed: every variant of a seed trains on the same cases; "
        "smaller fractions are nested in larger ones).",
        f"- Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.",
    ]
    if command:
        lines.append(f"- Command: `{command}`")
    return "\n".join(lines)


def run_benchmark(plan: BenchmarkPlan, out: str | Path, *, progress: bool = False, command: str | None = None,
                  log=print) -> Path:
    """Run (or continue) every run of ``plan`` in ``out``, then write the CSVs and the report.

    Returns:
        the path of ``report.md``.

    Raises:
        ConfigError / DataError: bad settings or data, before any run starts (a rerun with other base settings in
            the same ``out`` is refused).
    """
    from .report import write_benchmark_report

    out = Path(out)
    base = plan.base_config()
    if plan.iterations_per_epoch is None and base.train.iterations_per_epoch is None:
        plan.iterations_per_epoch = full_training_steps(base)
    specs = plan_runs(plan, base)  # every config checked before anything is written
    _load_or_save_plan(plan, out)
    total = len(specs)
    log(f"[benchmark] {total} runs ({len(plan.variants)} variants x {len(plan.fractions)} fractions x "
        f"{len(plan.seeds)} seeds x {len(plan.grid)} grid points) in {out}")
    start = time.perf_counter()
    for i, spec in enumerate(specs, 1):
        state = _run_state(out / spec.name)
        if state == "done":
            with _claim(out, spec) as mine:
                added = _add_missing_splits(spec, out, plan.eval_splits) if mine else []
            if added:
                log(f"[benchmark] {i}/{total} {spec.name}: its best checkpoint evaluated on {', '.join(added)}")
            continue
        if state == "failed":
            continue
        with _claim(out, spec) as mine:
            if not mine:  # another process of the same benchmark is training it
                log(f"[benchmark] {i}/{total} {spec.name} is being trained by another process; skipped")
                continue
            state = _run_state(out / spec.name)  # it may have finished while we waited for the claim
            if state in ("done", "failed"):
                continue
            verb = "resuming" if state == "interrupted" else "training"
            log(f"[benchmark] {i}/{total} {verb} {spec.name}" + (f" ({spec.grid})" if spec.grid else ""))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                status = _execute(spec, out, plan.eval_splits, progress)
        done, failed = collect_results(specs, out)
        log(f"[benchmark] {spec.name}: {status} ({done} done, {failed} failed, "
            f"{time.perf_counter() - start:.0f} s this session)")
    done, failed = collect_results(specs, out)
    if done == 0:
        raise DragsawError(f"no run of the benchmark in {out} finished; see the runs' failed.json files.")
    report = write_benchmark_report(out, title=f"dragsaw benchmark: {plan.preset}", notes=_notes(plan, specs, command))
    log(f"[benchmark] {done} runs done, {failed} failed; report: {report}")
    return report


def smoke_plan(out: Path) -> BenchmarkPlan:
    """A tiny benchmark on synthetic data written into ``out/data`` (seconds; checks the machinery, not methods)."""
    from ..data import write_folder

    root = out / "data"
    if not root.is_dir():
        write_folder(root, n_train=16, n_test=6, size=(32, 32), seed=0)
    return BenchmarkPlan(
        preset="folder", profile="cpu", data_root=str(root),
        overrides=["data.input_size=[32, 32]", "model.options.channels=[4, 8, 16]", "train.epochs=2",
                   "train.batch_size=4", "pdcr.encoder_samples=[8, 8]", "pdcr.decoder_samples=[8, 8]",
                   "pdcr.cross_samples=8", "pdcr.layers=null", "pdcr.cross_layers=null"],
        variants=parse_variants("baseline,full"), fractions=[1.0, 0.5], seeds=[0, 1],
    )

