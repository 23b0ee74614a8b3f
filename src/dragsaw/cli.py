"""The ``dragsaw`` command line: thin argument parsing over plain functions (which the tests call directly).

Every user-facing failure is printed as one paragraph (what, which file or value, how to fix) with a non-zero
exit code; ``--debug`` shows the Python traceback instead. Exit codes: 0 success, 1 ``verify --strict`` found
warnings only, 2 bad input (argument, path, data, configuration, output folder; also ``predict`` with some bad
inputs), 3 an unexpected internal error (a bug: rerun with ``--debug`` and report it), 130 interrupted (SIGINT), 143
``train`` stopped by SIGTERM (both with ``last.ckpt`` written: continue with ``--resume``).

Hosts of your own: the commands that build a model (train, evaluate, predict, benchmark) first import the hosts of
the installed packages' ``dragsaw.models`` entry points (a warning for each that cannot be loaded), then each
``--import MODULE`` (a module name or a ``.py`` file) in order. ``train`` records its ``--import`` modules in the
run's ``model.imports``, which ``evaluate`` and ``predict`` import again (see docs/user-hosts.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from .errors import ConfigError, DragsawError, InterruptedRun

__all__ = ["main", "build_parser", "check_output_dir", "load_user_modules"]

EXIT_ERROR = 2
EXIT_INTERNAL = 3

MODEL_COMMANDS = ("train", "evaluate", "predict", "benchmark", "taps")
"""The commands that build a model: they take ``--import`` and load the ``dragsaw.models`` entry points first."""

INFERENCE_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
"""``--precision`` of evaluate / predict: :data:`dragsaw.inference.PRECISIONS` (not imported here: it loads torch)."""
POSTPROCESS_CHOICES = ("none", "largest-component", "remove-small")
"""``--postprocess`` of evaluate / predict: :data:`dragsaw.inference.POSTPROCESS` (not imported: it loads torch)."""


class _Failed(DragsawError):
    """A command that ran to completion but must exit with ``code`` and a message (e.g. a failed check)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check, without creating anything, that the folder ``path`` can be created (or written when it exists).

    Raises:
        ConfigError: ``path`` is an existing file, lies under a file, or its nearest existing folder is not
            writable; the message names the path and the option to change.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is an existing file, not a folder; choose a folder path for {flag}.")
    existing = next((p for p in [path, *path.parents] if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise ConfigError(f"cannot create {flag} {str(path)!r}: {str(existing)!r} is a file, not a folder; choose "
                          f"another {flag}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {flag} {str(path)!r}: no write permission in {str(existing)!r}; choose a "
                          f"writable {flag} or fix the folder's permissions.")
    return path


def _config(args) -> "RunConfig":  # noqa: F821
    from .config import apply_overrides, load_preset

    config = load_preset(args.preset, args.profile)
    if getattr(args, "data_root", None):
        config.data.root = str(args.data_root)
    if getattr(args, "extra_root", None):
        config.data.extra_root = str(args.extra_root)
    return apply_overrides(config, args.set or [])


def load_user_modules(command: str, imports: list[str]) -> None:
    """Before a model-building ``command`` does anything else: import the hosts of the ``dragsaw.models`` entry
    points (printing a warning paragraph for each that cannot be loaded), then the ``imports`` (``--import``) in
    order.

    Raises:
        ConfigError: an ``--import`` module cannot be imported (naming it, why and the fix).
    """
    from .models.registry import ModuleImportError, import_user_module, load_entry_points

    for message in load_entry_points(warn=False):
        print(_paragraph(f"dragsaw {command}: warning: {message}"), file=sys.stderr)
    for spec in imports:
        try:
            import_user_module(spec)
        except ModuleImportError as exc:
            raise ConfigError(f"--import {spec}: {exc.reason}; {exc.remedy}.") from exc


def _recorded_imports(recorded: list[str], imports: list[str]) -> list[str]:
    """``model.imports`` with the ``--import`` values appended (``.py`` paths made absolute), each once."""
    given = [str(Path(s).expanduser().resolve()) if s.endswith(".py") else s for s in imports]
    return list(dict.fromkeys([*recorded, *given]))


def cmd_train(args) -> int:
    from .engine import train

    if args.resume:
        from .engine.run import resume_config

        if args.preset or args.data_root:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --preset/--data-root "
                              "(use --set train.epochs=N to extend it).")
        out = Path(args.resume)
        config = resume_config(out, args.set or [])
    else:
        if not args.preset:
            raise ConfigError("dragsaw train needs --preset NAME (see `dragsaw presets`) or --resume RUN.")
        config = _config(args)
        out = check_output_dir(Path(args.out) if args.out else Path("runs") / config.name)
    if args.imports:  # recorded in the run: evaluate / predict import them again in a fresh process
        config.model.imports = _recorded_imports(config.model.imports, args.imports)
    if args.deterministic:
        config.train.deterministic = True
    metrics = train(config, out, resume=bool(args.resume), progress=not args.quiet)
    if metrics:  # empty on the ranks other than 0 of a run of several processes: rank 0 reports once
        _print_summary(metrics, out)
    return 0


def _print_summary(metrics: dict, where: Path) -> None:
    choice = metrics.get("postprocess_choice")
    if choice:  # evaluate --postprocess auto
        means = ", ".join(f"{name} {value:.4f}" for name, value in choice["mean_dice_fg"].items())
        print(f"post-processing chosen on {choice['cases']} validation cases: {choice['chosen']} (mean Dice {means}); "
              f"use --postprocess {choice['chosen']} with predict")
    for split in ("val", "test"):
        if split in metrics:
            mean = metrics[split]["mean"]
            print(
                f"{split:>5}: Dice {mean['dice_fg']['mean']:.4f}  Jaccard {mean['jaccard_fg']['mean']:.4f}  "
                f"accuracy {mean['accuracy']['mean']:.4f}  ({mean['dice_fg']['n']} cases)"
            )
    print(f"results in {where}")


def _inference_options(args) -> dict:
    """``--device``, ``--precision``, ``--tta/--no-tta``, ``--sw-batch-size`` and the progress bar (on when stderr is
    a terminal and ``--quiet`` is not given) of ``evaluate`` / ``predict``, checked before any file is read.

    Raises:
        ConfigError: a device this machine lacks, a precision it cannot run, or ``--sw-batch-size`` < 1.
    """
    from .inference import autocast_dtype, resolve_device

    device = resolve_device(args.device)
    autocast_dtype(args.precision, device)
    if args.sw_batch_size is not None and args.sw_batch_size < 1:
        raise ConfigError(f"--sw-batch-size {args.sw_batch_size} must be >= 1 (windows per forward of the "
                          "sliding-window inference); use e.g. --sw-batch-size 2, or leave it out for the run's "
                          "train.sw_batch_size.")
    return {"device": device, "precision": args.precision, "tta": args.tta, "sw_batch_size": args.sw_batch_size,
            "progress": not args.quiet and sys.stderr.isatty()}


def cmd_evaluate(args) -> int:
    from .engine import evaluate_run

    options = _inference_options(args)
    config = _config(args) if args.preset else None
    overrides: list[str] = []
    if config is None:  # the run's own data: --set data.root=NEW (or --data-root) says where it is now
        overrides = list(args.set or [])
        for key, value in (("data.root", args.data_root), ("data.extra_root", args.extra_root)):
            if value:
                overrides.append(f"{key}={json.dumps(str(value))}")  # JSON is YAML: any path stays one string
    if args.out:
        check_output_dir(args.out)
    where: list[Path] = []

    def check_out(folder: Path) -> None:  # the default folder names the variant (ensemble, tta, post-processing)
        where.append(folder)
        if not args.out:
            check_output_dir(folder)

    metrics = evaluate_run(args.run, config, out=args.out, overrides=overrides, shift=args.shift,
                           ensemble=args.ensemble, postprocess=args.postprocess, check_out=check_out, **options)
    _print_summary(metrics, where[-1] if where else Path(args.out or Path(args.run) / "evaluation"))
    return 0


def _is_run(path: Path) -> bool:
    """A run directory (it has checkpoints/best.ckpt or last.ckpt) or a checkpoint file (``.ckpt``)."""
    if path.is_dir():
        return any((path / "checkpoints" / name).is_file() for name in ("best.ckpt", "last.ckpt"))
    return path.suffix == ".ckpt" and path.is_file()


def cmd_predict(args) -> int:
    from .engine import load_task
    from .inference import predict_files, read_predict_manifest

    options = _inference_options(args)
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers {args.num_workers} must be >= 0 (0: read the inputs in the main process); "
                          "use e.g. --num-workers 2.")
    if args.postprocess not in POSTPROCESS_CHOICES:  # argparse checks choices; a direct caller may not
        raise ConfigError(f"--postprocess {args.postprocess!r}: use one of {', '.join(POSTPROCESS_CHOICES)}")
    items = list(args.inputs)
    runs = [args.run]
    while items and _is_run(Path(items[0])):  # leading run directories / checkpoints: more ensemble members
        runs.append(items.pop(0))
    runs += list(args.ensemble or [])
    if not items:
        raise ConfigError(f"predict got the run(s) {', '.join(map(str, runs))} but no input; give image/volume files "
                          "or folders after the run(s), e.g. dragsaw predict RUN [RUN ...] INPUTS... --out DIR.")
    task, ckpt = load_task(args.run)
    from .engine.run import load_ensemble

    model, _members = load_ensemble(task, ckpt, runs[1:])
    from .data.io.formats import is_dicom_folder

    inputs: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            try:  # the outputs of an earlier predict into this folder are not inputs
                ours = set(read_predict_manifest(path))
            except DragsawError:
                ours = set()
            files = [path] if is_dicom_folder(path) else input_files(path, skip=ours)
            if not files:
                besides = " (besides the outputs of an earlier dragsaw predict)" if ours else ""
                raise ConfigError(f"input folder {str(path)!r} holds no files{besides}; give image/volume files or a "
                                  "folder that holds them.")
            inputs += files
        else:
            inputs.append(path)  # a missing file is reported with the other bad inputs
    unique: dict[Path, Path] = {}
    for path in inputs:  # each file once (a file and its folder may both be given)
        unique.setdefault(path.resolve(), path)
    inputs = list(unique.values())
    out = check_output_dir(args.out)
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {str(out)!r} ({exc}); choose a writable --out.") from exc
    written: list[Path] = []
    try:
        written, failures = predict_files(model, inputs, out, task.config, probabilities=args.probabilities,
                                          in_channels=task.hparams.get("in_channels"), overwrite=args.overwrite,
                                          num_workers=args.num_workers, plan=task.plan, postprocess=args.postprocess,
                                          **options)
    finally:
        for folder in [] if written else created:  # nothing written: leave no empty output folder behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    if written:
        averaged = f" (mean probabilities of {len(runs)} runs)" if len(runs) > 1 else ""
        print(f"wrote {len(written)} files for {len(inputs) - len(failures)} of {len(inputs)} inputs to {out}"
              f"{averaged}")
    for path, reason in failures.items():
        print(f"error: {path}: {reason}", file=sys.stderr)
    if failures:
        print(f"dragsaw predict: error: {len(failures)} of {len(inputs)} input(s) could not be predicted (listed "
              "above with the reason); fix or remove them and run predict again for those files.", file=sys.stderr)
    return EXIT_ERROR if failures else 0


def cmd_verify(args) -> int:
    from .data.verify import verify_dataset

    config = _config(args)
    if not config.data.root:
        raise ConfigError("dragsaw verify needs --data-root PATH (the dataset folder in its official layout).")
    options = {"ph2_root": config.data.extra_root} if config.data.extra_root else {}
    report = verify_dataset(config.data.dataset, config.data.root, num_classes=config.data.num_classes,
                            value_map=config.data.value_map, quick=args.quick, **options)
    print(report.format())
    code = report.exit_code(strict=args.strict)
    if code:
        level = "error" if code == EXIT_ERROR else "warning"
        found = report.of_level(level)
        strict = " (--strict)" if code == 1 else ""
        raise _Failed(code, f"the dataset at {config.data.root} has {len(found)} {level}(s){strict}; the first: "
                            f"{found[0].line()}. The report above lists them all with their fixes.")
    return 0


def cmd_presets(args) -> int:
    from .config import available_presets

    for name, description in available_presets().items():
        print(f"{name:<14} {description}")
    return 0


def cmd_synth(args) -> int:
    from .data import write_decathlon, write_folder

    check_output_dir(args.out)
    if args.dims == 3:
        out = write_decathlon(args.out, n_train=args.train, n_test=args.test, shape=(args.size, args.size, args.size * 2 // 3),
                              seed=args.seed, num_classes=max(args.classes, 2))
        print(f"wrote {args.train} training and {args.test} test volumes (Decathlon layout) to {out}")
    else:
        out = write_folder(args.out, n_train=args.train, n_test=args.test, size=(args.size, args.size),
                           seed=args.seed, num_classes=args.classes)
        print(f"wrote {args.train} training and {args.test} test pairs to {out}")
    return 0


def cmd_benchmark(args) -> int:
    import torch

    from .benchmark import BenchmarkPlan, parse_grid, parse_variants, run_benchmark, smoke_plan
    from .benchmark.harness import split_top_level

    out = check_output_dir(args.out)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.smoke:
        plan = smoke_plan(out)
    else:
        if not args.preset:
            raise ConfigError("dragsaw benchmark needs --preset NAME (see `dragsaw presets`), or --smoke.")
        try:
            fractions = [float(v) for v in split_top_level(args.fractions)]
        except ValueError as exc:
            raise ConfigError(f"--fractions must be numbers separated by commas, e.g. 1,0.25; got {args.fractions!r}."
                              ) from exc
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1 (seeds 0..N-1), got {args.seeds}.")
        plan = BenchmarkPlan(
            preset=args.preset, profile=args.profile, data_root=args.data_root, extra_root=args.extra_root,
            overrides=list(args.set or []), variants=parse_variants(args.variants, args.variant),
            fractions=fractions, seeds=list(range(args.seeds)), grid=parse_grid(args.grid),
            eval_splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        )
    run_benchmark(plan, out, progress=args.progress, command="dragsaw " + " ".join(sys.argv[1:]))
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    load_user_modules("export", args.imports)
    export_run(args.run, args.format, args.out, checkpoint=args.checkpoint, opset=args.opset)
    return 0


def input_files(folder: Path, skip: set[str] = frozenset()) -> list[Path]:
    """The inputs in ``folder`` for ``predict``: its visible files and the DICOM series folders in it, sorted; not
    the names in ``skip`` (an earlier predict's outputs) nor the data files of detached headers (``x.nhdr`` /
    ``x.mhd`` beside ``x.raw``, ``x.raw.gz``, ``x.zraw``, ``x.img``), which are read through their header."""
    from .data.io.formats import is_dicom_folder

    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in skip]
    headers = {p.name[: -len(p.suffix)] for p in entries if p.suffix.lower() in (".nhdr", ".mhd")}

    def detached_data(name: str) -> bool:
        suffix = next((s for s in (".raw.gz", ".raw", ".zraw", ".img.gz", ".img") if name.lower().endswith(s)), None)
        return suffix is not None and name[: -len(suffix)] in headers

    return sorted(p for p in entries
                  if (p.is_file() and not detached_data(p.name)) or (p.is_dir() and is_dicom_folder(p)))


def cmd_taps(args) -> int:
    """``dragsaw taps``: the configuration's host, where PDCR taps and UAFS sits in it, then every feature map of
    the host by stride and role (:func:`dragsaw.taps.suggest`), to choose ``pdcr.layers`` / ``uafs.points``."""
    from .engine.build import build_network
    from .taps import format_suggestions, suggest

    config = _config(args)
    dims, size = config.model.spatial_dims, list(config.data.input_size)
    channels = args.in_channels or len(config.data.modalities or []) or 1
    config.pdcr.enabled = config.uafs.enabled = True  # show both, whatever the preset's variant
    net = build_network(config, channels)
    params = sum(p.numel() for p in net.model.parameters())
    print(f"host {config.model.name} ({dims}D, {params:,} parameters with UAFS) on an input [1, {channels}, "
          f"*{size}] (data.input_size; --in-channels, --set data.input_size=... to change)")
    print("PDCR taps " + ("(pdcr.layers):" if config.pdcr.layers is not None else "(the host's defaults):"))
    for tap in net.taps:
        print(f"  {tap.name:<32} {tap.role:<8} channels {tap.channels:<5} stride {'x'.join(map(str, tap.stride))}")
    pairs = [list(p) for p in net.pdcr.cross_layers] if net.pdcr is not None else []
    print(f"PDCR cross-layer pairs: {pairs or 'none'}")
    print(f"UAFS after: {net.uafs_points or 'none'}")
    records = suggest(net.model, [1, channels, *size], receptive_fields=args.receptive_fields)
    print(f"\nfeature maps of the host{'' if args.all else ' (candidates; --all for every map)'}:")
    print(format_suggestions(records, candidates_only=not args.all))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    check_output_dir(args.out)
    run_demo(Path(args.out), quick=args.quick, dims=args.dims)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dragsaw", description="PDCR + UAFS medical image segmentation.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="baseline vs PDCR+UAFS on embedded synthetic data (minutes on a CPU)")
    demo.add_argument("--out", default="dragsaw-demo", help="output directory (default: dragsaw-demo)")
    demo.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds), not meaningful numbers")
    demo.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2D images (default) or 3D volumes")
    demo.set_defaults(func=cmd_demo)

    def data_args(p, required_preset: bool) -> None:
        p.add_argument("--preset", required=required_preset, help="preset name (`dragsaw presets`) or YAML file")
        p.add_argument("--profile", default=None, help="preset profile, e.g. cpu")
        p.add_argument("--data-root", help="dataset folder in its official layout")
        p.add_argument("--extra-root", help="second dataset folder (PH2 for the isic2016-ph2 protocol)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.epochs=5")

    def import_arg(p) -> None:
        p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import a module that registers hosts of your own (@register_model) first: a module "
                            "name importable from sys.path (PYTHONPATH) or the path of a .py file; repeatable. train "
                            "records it in the run (model.imports), so evaluate and predict need it no more")

    def inference_args(p, postprocess_choices: tuple[str, ...] = POSTPROCESS_CHOICES) -> None:
        p.add_argument("--device", default="auto",
                       help="auto, cpu, cuda, cuda:N or mps (default auto: cuda if available, else mps, else cpu)")
        p.add_argument("--precision", default="32-true", choices=INFERENCE_PRECISIONS,
                       help="32-true (default), or the network in bfloat16 / float16 under autocast (bf16-mixed, "
                            "16-mixed); probabilities and metrics stay float32")
        p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="test-time mirroring: average over flips of every spatial axis (1 + 2 or 3 forward "
                            "passes; default: the run's train.mirror)")
        p.add_argument("--sw-batch-size", type=int, metavar="N",
                       help="3D: windows per forward of the sliding-window inference (default: the run's "
                            "train.sw_batch_size)")
        p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a "
                                                            "terminal)")
        p.add_argument("--ensemble", nargs="+", action="extend", default=[], metavar="RUN",
                       help="more runs (directories or checkpoints) to average with RUN: their softmax probabilities "
                            "(not logits) and UAFS maps are averaged; they must share RUN's classes and "
                            "preprocessing (e.g. the folds or seeds of one experiment); predict: put it after "
                            "the inputs")
        p.add_argument("--postprocess", default="none",
                       choices=postprocess_choices,
                       help="none (default); largest-component: keep each foreground class's largest connected "
                            "component (face connectivity) of the prediction in the input's geometry; remove-small: "
                            "remove each class's components under 10%% of its largest (anatomy in several parts, "
                            "e.g. two lungs); evaluate also takes auto: the one with the best validation Dice")

    train = sub.add_parser("train", help="train a model into a run directory")
    data_args(train, required_preset=False)
    train.add_argument("--out", help="run directory (default: runs/<preset>)")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms: an interrupted and resumed run ends as an uninterrupted one")
    import_arg(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a run (on its own data, or on another preset's data)")
    evaluate.add_argument("run", help="run directory or checkpoint")
    data_args(evaluate, required_preset=False)
    evaluate.add_argument("--out", help="where metrics.json and overlays go (default: RUN/evaluation)")
    evaluate.add_argument("--shift", metavar="NAME",
                          help="2D: score under a controlled intensity shift of every image: gamma-G, contrast-F, "
                               "brightness+F / brightness-F, blur-S (e.g. gamma-0.5, contrast-0.5, brightness-0.2)")
    inference_args(evaluate, POSTPROCESS_CHOICES + ("auto",))  # auto chooses on the validation split
    import_arg(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="predict masks, probabilities and uncertainty maps for images",
                             description="dragsaw predict RUN [RUN ...] INPUTS... --out DIR: the leading arguments "
                                         "that are run directories (with checkpoints/best.ckpt or last.ckpt) or .ckpt "
                                         "files are runs, averaged as an ensemble when there are several; the "
                                         "rest are inputs.")
    predict.add_argument("run", help="run directory or checkpoint")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files or folders; more runs (an ensemble) may come first, before them")
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--probabilities", action="store_true", help="3D: also write class probabilities (NIfTI)")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace the outputs of an earlier predict into --out (only files dragsaw wrote there, "
                              "unchanged; never an input)")
    inference_args(predict)
    predict.add_argument("--num-workers", type=int, default=0, metavar="N",
                         help="read the inputs in N worker processes ahead of the network (default 0: one at a time "
                              "in the main process)")
    import_arg(predict)
    predict.set_defaults(func=cmd_predict)

    verify = sub.add_parser("verify", help="check every case of a dataset; exit 0 clean, 1 warnings (--strict), 2 errors")
    data_args(verify, required_preset=True)
    verify.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    verify.add_argument("--quick", action="store_true", help="headers plus a sample (what training runs first)")
    verify.set_defaults(func=cmd_verify)

    bench = sub.add_parser("benchmark", help="variants x training fractions x seeds (x grid) with paired statistics")
    data_args(bench, required_preset=False)
    bench.add_argument("--variants", default="baseline,pdcr,uafs,full",
                       help="built-in variants: baseline, pdcr, uafs, full (default: all four)")
    bench.add_argument("--variant", action="append", metavar="NAME:KEY=V;KEY=V",
                       help="a named variant of overrides, e.g. full-ramp:full;pdcr.ramp_epochs=5 (repeatable)")
    bench.add_argument("--fractions", default="1", help="training-data fractions, e.g. 1,0.25 (nested subsets)")
    bench.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant and fraction (default 3)")
    bench.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                       help="a config key and its values; several --grid give their cross product")
    bench.add_argument("--splits", default="val,test",
                       help="evaluated splits: val,test (default) or val (keeps the test set unseen while choosing)")
    bench.add_argument("--out", required=True, help="output folder (rerun the same command to continue it)")
    bench.add_argument("--threads", type=int, help="torch intra-op threads")
    bench.add_argument("--progress", action="store_true", help="show each run's progress bar")
    bench.add_argument("--smoke", action="store_true", help="a tiny benchmark on synthetic data (checks the machinery)")
    import_arg(bench)
    bench.set_defaults(func=cmd_benchmark)

    export = sub.add_parser("export", help="export a run's model (ONNX, TorchScript, torch.export) with FILE.json, "
                                           "verified against PyTorch (docs/export.md)")
    export.add_argument("run", help="run directory or checkpoint")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript", "exported-program"))
    export.add_argument("--out", required=True, metavar="FILE", help="the model file (FILE.json is written beside it)")
    export.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint (default best)")
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    import_arg(export)
    export.set_defaults(func=cmd_export)

    taps = sub.add_parser("taps", help="where PDCR and UAFS sit in a configuration's host, and every feature map of "
                                       "the host by stride and role (to choose pdcr.layers, docs/user-hosts.md)")
    taps.add_argument("--preset", required=True, help="preset name (`dragsaw presets`) or YAML file")
    taps.add_argument("--profile", help="preset profile, e.g. cpu")
    taps.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.name=segresnet")
    taps.add_argument("--in-channels", type=int, metavar="N",
                      help="input channels (default: the preset's modalities, else 1; strides do not depend on it)")
    taps.add_argument("--all", action="store_true", help="every feature map, not only the candidates")
    taps.add_argument("--receptive-fields", action="store_true", help="measure each candidate's receptive field")
    import_arg(taps)
    taps.set_defaults(func=cmd_taps)

    presets = sub.add_parser("presets", help="list the presets")
    presets.set_defaults(func=cmd_presets)

    synth = sub.add_parser("synth", help="write the synthetic dermoscopy-like dataset (generic folder layout)")
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, default=80)
    synth.add_argument("--test", type=int, default=20)
    synth.add_argument("--size", type=int, default=256)
    synth.add_argument("--classes", type=int, default=2)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--dims", type=int, default=2, choices=(2, 3), help="2D folder pairs or 3D Decathlon volumes")
    synth.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dragsaw`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in MODEL_COMMANDS:
            load_user_modules(args.command, args.imports)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except InterruptedRun as exc:  # a clean stop (train: SIGINT/SIGTERM): one line, not an error paragraph
        print(f"dragsaw {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.debug:
            raise
        code, text = _describe(exc)
        print(_paragraph(f"dragsaw {args.command}: error: {text}"), file=sys.stderr)
        return code


def _paragraph(text: str) -> str:
    """``text`` wrapped at 100 columns, paths kept whole (copyable)."""
    return textwrap.fill(text, width=100, break_on_hyphens=False, break_long_words=False)


def _describe(exc: Exception) -> tuple[int, str]:
    """Exit code and one-paragraph text for an exception that reached :func:`main`."""
    if isinstance(exc, DragsawError):
        return getattr(exc, "code", EXIT_ERROR), str(exc)
    if isinstance(exc, OSError):  # a file system refusal the checks above did not foresee
        where = f" {exc.filename!r}" if exc.filename else ""
        return EXIT_ERROR, (f"{exc.strerror or exc}:{where}; check that the path exists, is of the right kind "
                            "(file or folder) and that you may read or write it.")
    return EXIT_INTERNAL, (f"unexpected {type(exc).__name__}: {exc}. This is a bug in dragsaw or an unchecked "
                           "input; rerun with --debug to see the traceback and report it.")


if __name__ == "__main__":
    sys.exit(main())
