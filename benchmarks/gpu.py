"""Helpers of ``benchmarks/gpu.sh``: the wheels to carry, the environment check, training throughput, the summary.

Subcommands (``python benchmarks/gpu.py CMD --help``):

- ``wheels --out DIR``: (dev machine) download the pure-Python wheels of dragsaw's ``pipeline`` dependencies and of
  their own dependencies, pinned to the versions installed in this environment; torch and torch's own dependencies
  are left out, and so are compiled packages (numpy, scipy, matplotlib, pillow, ...), which the GPU machine's image
  is expected to hold (``env`` checks it there).
- ``install-plan --wheels DIR``: (GPU machine, standard library only) print the carried wheels whose distribution
  is not installed yet, one path a line; installed ones are kept whatever their version (never touches torch).
- ``env``: Python, torch, CUDA and GPU, the versions of the pipeline packages; exit 1 when one does not import.
- ``throughput``: training images/s and peak memory of the ``folder`` preset's network (DeepLabV3+ with aligned
  Xception), baseline vs full (PDCR + UAFS), fp32 (``32-true``) vs ``bf16-mixed``, through the engine's own
  ``SegmentationTask.training_step`` and optimizer. Each configuration runs in its own process (a fresh peak and a
  time limit each). GPU memory is ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps; CPU memory
  is the process's peak resident set size (``ru_maxrss``), with its size before the first step.
- ``summary --bench DIR``: a table of a ``dragsaw benchmark`` folder's runs (``runs.csv``), its JSON, and the
  report when an interrupted benchmark did not write one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PIPELINE_IMPORTS = {  # distribution -> module
    "numpy": "numpy", "monai": "monai", "lightning": "lightning", "nibabel": "nibabel", "pillow": "PIL",
    "pyyaml": "yaml", "matplotlib": "matplotlib", "scipy": "scipy", "tensorboard": "tensorboard",
}
SKIP_ALWAYS = {"torch", "pip", "setuptools", "wheel", "dragsaw", "triton"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ----------------------------------------------------------------------------------------------------- wheels
def _requirements(dist, extra: str, environment: dict) -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({**environment, "extra": extra}):
            names.append(_norm(req.name))
    return names


def _closure(roots: list[str], environment: dict) -> dict[str, object]:
    from importlib import metadata

    seen: dict[str, object] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            seen[name] = None  # an optional dependency not installed here
            continue
        seen[name] = dist
        todo += _requirements(dist, "", environment)
    return seen


def _is_pure(dist) -> bool:
    text = dist.read_text("WHEEL") or ""
    tags = re.findall(r"^Tag:\s*(\S+)", text, re.M)
    return "Root-Is-Purelib: true" in text and bool(tags) and all(t.endswith("-none-any") for t in tags)


def cmd_wheels(args) -> int:
    from importlib import metadata

    major, minor = args.python_version.split(".")[:2]
    environment = {"python_version": f"{major}.{minor}", "python_full_version": f"{major}.{minor}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}
    dragsaw = metadata.distribution("dragsaw")
    roots = _requirements(dragsaw, "pipeline", environment)
    torch_side = set(_closure(["torch"], environment))  # torch and what it pulls in: never carried
    closure = _closure(roots, environment)
    pure, compiled, absent = [], [], []
    for name, dist in sorted(closure.items()):
        if name in SKIP_ALWAYS or name in torch_side or name.startswith("nvidia-"):
            continue
        if dist is None:
            absent.append(name)
        elif _is_pure(dist):
            pure.append(f"{dist.metadata['Name']}=={dist.version}")
        else:
            compiled.append(f"{dist.metadata['Name']}=={dist.version}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[wheels] pipeline roots: {', '.join(roots)}")
    print(f"[wheels] left to torch's side: {', '.join(sorted(torch_side - SKIP_ALWAYS))}")
    print(f"[wheels] compiled, NOT carried (expected preinstalled there): {', '.join(compiled) or 'none'}")
    if absent:
        print(f"[wheels] required but not installed here (not carried): {', '.join(absent)}")
    print(f"[wheels] pure-Python, carried: {', '.join(pure)}")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary=:all:", "--python-version", f"{major}.{minor}", "--implementation", "py",
               "--abi", "none", "--platform", "any", "-d", str(out), *pure]
    done = subprocess.run(command)
    if done.returncode != 0:
        print("[wheels] pip download failed", file=sys.stderr)
        return done.returncode
    (out / "carried.txt").write_text("\n".join(pure) + "\n")
    (out / "not-carried.txt").write_text("\n".join(compiled) + "\n")
    return 0


def cmd_install_plan(args) -> int:
    from importlib import metadata

    for wheel in sorted(Path(args.wheels).glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            print(f"[install] {name} {version}: missing, installing the carried wheel", file=sys.stderr)
            print(wheel)
            continue
        note = "" if _norm(have) == _norm(version) else f" (carried {version}, kept the installed one)"
        print(f"[install] {name} {have}: preinstalled{note}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------- env
def cmd_env(args) -> int:
    import importlib
    import platform
    from importlib import metadata

    print(f"python {platform.python_version()} at {sys.executable}; {platform.platform()}; {os.cpu_count()} CPUs")
    missing = []
    for dist, module in {**PIPELINE_IMPORTS, "dragsaw": "dragsaw.engine"}.items():
        try:
            imported = importlib.import_module(module)
            where = Path(getattr(imported, "__file__", "") or "?").parent
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = getattr(imported, "__version__", "?")
            print(f"  {dist:<12} {version:<14} {where}")
        except Exception as exc:  # noqa: BLE001 - report every failure
            missing.append(dist)
            print(f"  {dist:<12} IMPORT FAILED: {type(exc).__name__}: {exc}")
    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
              f"{props.multi_processor_count} SMs; bf16 supported: {torch.cuda.is_bf16_supported()}; "
              f"TF32 conv {torch.backends.cudnn.allow_tf32}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}")
    if missing:
        print(f"MISSING: {', '.join(missing)}")
        return 1
    if args.need_cuda and not torch.cuda.is_available():
        print("MISSING: a CUDA device")
        return 1
    return 0


# ----------------------------------------------------------------------------------------------------- throughput
def _resident_mib() -> float:
    import resource

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _blob_batch(batch: int, size: int, channels: int):
    """Images [B, C, S, S] and labels [B, S, S]: one ellipse of foreground each (like lung fields), fixed seed."""
    import torch

    generator = torch.Generator().manual_seed(0)
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centre = (torch.rand(batch, 2, generator=generator) - 0.5) * 0.6
    radius = 0.3 + torch.rand(batch, 2, generator=generator) * 0.3
    inside = ((yy - centre[:, :1, None]) / radius[:, :1, None]) ** 2 + \
             ((xx - centre[:, 1:, None]) / radius[:, 1:, None]) ** 2 < 1.0
    labels = inside.long()
    noise = 0.5 * torch.randn(batch, channels, size, size, generator=generator)
    images = labels[:, None].float().expand(-1, channels, -1, -1) + noise
    return images.contiguous(), labels


def _measure(spec: dict, queue) -> None:
    """One configuration, in its own process: build, warm up, time; put a dict on ``queue``."""
    try:
        queue.put(_measure_inner(spec))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        import traceback

        queue.put({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]})


def _measure_inner(spec: dict) -> dict:
    import resource

    import torch

    from dragsaw.benchmark.harness import BUILTIN_VARIANTS
    from dragsaw.config import apply_overrides, load_preset
    from dragsaw.engine import SegmentationTask

    device = torch.device(spec["device"])
    if device.type == "cpu" and spec["threads"]:
        torch.set_num_threads(spec["threads"])
    size, batch = spec["size"], spec["batch"]
    config = apply_overrides(load_preset("folder"), [f"data.input_size=[{size}, {size}]", f"train.batch_size={batch}",
                                                     f"train.precision={spec['precision']}", *spec["overrides"],
                                                     *BUILTIN_VARIANTS[spec["variant"]]])
    torch.manual_seed(0)
    task = SegmentationTask.from_config(config, in_channels=spec["in_channels"], steps_per_epoch=11)
    task.log_dict = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    task.log = lambda *a, **k: None
    task.to(device)
    task.train()
    optimizer = task.configure_optimizers()["optimizer"]  # the engine's Adam with its settings
    images, labels = _blob_batch(batch, size, spec["in_channels"])
    data = {"image": images.to(device), "label": labels.to(device)}
    # Lightning's bf16-mixed = autocast around training_step, backward and step outside, no gradient scaler
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if spec["precision"] == "bf16-mixed"
                else contextlib.nullcontext())
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = task.training_step(data, 0)
        loss.backward()
        optimizer.step()
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    rss_before = _resident_mib()
    start = time.perf_counter()
    for _ in range(spec["warmup"]):
        loss = step()
    sync()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - start)
    ordered = sorted(times)
    median = ordered[len(ordered) // 2]
    result = {
        "variant": spec["variant"], "precision": spec["precision"], "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "params_m": sum(p.numel() for p in task.parameters()) / 1e6,
        "batch": batch, "size": size, "in_channels": spec["in_channels"], "warmup_steps": spec["warmup"], "steps": spec["steps"],
        "warmup_s": warmup_s, "median_s": median, "mean_s": sum(times) / len(times), "min_s": ordered[0],
        "images_per_s": batch / median, "final_loss": float(loss.detach().float()),
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_steps_mib": rss_before,
    }
    if cuda:
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return result


def _run_isolated(spec: dict, timeout: float, start_method: str) -> dict:
    return {"variant": spec["variant"], "precision": spec["precision"],
            **run_in_process(_measure, spec, timeout, start_method)}


def run_in_process(target, spec: dict, timeout: float, start_method: str) -> dict:
    """``target(spec, queue)`` in a fresh process: the dict it puts on the queue, or ``{"error": ...}`` when the
    process dies or runs past ``timeout`` seconds (it is then terminated)."""
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context(start_method)
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(spec, queue))
    proc.start()
    deadline = time.monotonic() + timeout
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not proc.is_alive():
                with contextlib.suppress(queue_module.Empty):
                    result = queue.get(timeout=1.0)
                if result is None:
                    result = {"error": f"process died (exit code {proc.exitcode})"}
            elif time.monotonic() > deadline:
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                result = {"error": f"timeout after {timeout:.0f} s"}
    proc.join(10)
    return result


def cmd_throughput(args) -> int:
    import platform

    device = args.device
    if device == "auto":  # the NVML check initialises no CUDA context in this (forking) parent
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    import torch  # noqa: F401 - imported once here, shared by forked children

    import dragsaw.engine  # noqa: F401

    # fork is quick (torch and dragsaw imported once, here); CUDA wants fresh processes (spawn)
    start_method = args.start or ("fork" if device == "cpu" and sys.platform.startswith("linux") else "spawn")
    variants = args.variants.split(",")
    precisions = args.precisions.split(",")
    results = []
    print(f"[throughput] device {device}, input {args.batch}x{args.in_channels}x{args.size}x{args.size}, {args.warmup} warm-up + "
          f"{args.steps} timed steps, overrides {args.set or 'none'}, one process per configuration ({start_method})",
          flush=True)
    for precision in precisions:
        for variant in variants:
            spec = {"variant": variant, "precision": precision, "device": device, "size": args.size,
                    "batch": args.batch, "in_channels": args.in_channels, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                    "overrides": args.set}
            started = time.perf_counter()
            result = _run_isolated(spec, args.timeout, start_method)
            result["wall_s"] = time.perf_counter() - started
            results.append(result)
            if "error" in result:
                print(f"[throughput] {variant} {precision}: FAILED {result['error']}", flush=True)
                if result.get("traceback"):
                    print(result["traceback"], flush=True)
            else:
                print(f"[throughput] {variant} {precision}: {result['images_per_s']:.1f} img/s "
                      f"({result['wall_s']:.0f} s wall)", flush=True)
    _print_throughput(results, device)
    payload = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
               "machine": platform.platform(), "cpu_count": os.cpu_count(), "args": {k: v for k, v in vars(args).items() if k != "func"}, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"[throughput] wrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


def _print_throughput(results: list[dict], device: str) -> None:
    ok = [r for r in results if "error" not in r]
    cuda = device.startswith("cuda")
    memory_label = "peak alloc MiB" if cuda else "peak RSS MiB"
    print()
    name = ok[0]["device_name"] if ok else device
    params = ", ".join(f"{r['variant']} {r['params_m']:.2f} M" for r in ok if r["precision"] == ok[0]["precision"])
    print(f"Training throughput on {name} (params: {params or '?'})")
    header = f"{'variant':<10} {'precision':<11} {'s/step':>8} {'img/s':>8} {'x base':>7} {memory_label:>15} {'x base':>7}"
    if not cuda:
        header += f" {'RSS before':>11}"
    print(header)
    print("-" * len(header))
    base = {r["precision"]: r for r in ok if r["variant"] == "baseline"}
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<10} {r['precision']:<11} FAILED: {r['error']}")
            continue
        memory = r["peak_allocated_mib"] if cuda else r["process_peak_rss_mib"]
        ref = base.get(r["precision"])
        ref_mem = None if ref is None else (ref["peak_allocated_mib"] if cuda else ref["process_peak_rss_mib"])
        speed = f"{ref['images_per_s'] / r['images_per_s']:7.2f}" if ref else f"{'':>7}"  # time ratio (>1 slower)
        mem = f"{memory / ref_mem:7.2f}" if ref_mem else f"{'':>7}"
        line = (f"{r['variant']:<10} {r['precision']:<11} {r['median_s']:8.3f} {r['images_per_s']:8.1f} {speed} "
                f"{memory:15.0f} {mem}")
        if not cuda:
            line += f" {r['rss_before_steps_mib']:11.0f}"
        print(line)
    print("('x base': time per step and memory over the baseline of the same precision)")


# ----------------------------------------------------------------------------------------------------- summary
def cmd_summary(args) -> int:
    import csv

    bench = Path(args.bench)
    runs_csv = bench / "runs.csv"
    if not runs_csv.is_file():
        print(f"[summary] no {runs_csv}: no run of the benchmark finished")
        return 1
    with open(runs_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not (bench / "report.md").is_file() and any(r["status"] == "done" for r in rows):
        try:  # an interrupted benchmark writes its CSVs after every run, the report only at the end
            from dragsaw.benchmark.report import write_benchmark_report

            write_benchmark_report(bench, title="dragsaw benchmark (interrupted; partial)")
            print("[summary] wrote a report of the finished runs (the benchmark did not finish)")
        except Exception as exc:  # noqa: BLE001
            print(f"[summary] report not written: {type(exc).__name__}: {exc}")

    def num(value, fmt):
        try:
            return format(float(value), fmt)
        except (TypeError, ValueError):
            return "-"

    print()
    print(f"Benchmark runs ({bench})")
    header = f"{'run':<28} {'status':<11} {'best ep':>7} {'steps':>6} {'seconds':>8} {'s/step':>7} {'val Dice':>9} {'test Dice':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['run'][-28:]:<28} {r['status']:<11} {r.get('best_epoch') or '-':>7} {r.get('steps') or '-':>6} "
              f"{num(r.get('seconds'), '.0f'):>8} {num(r.get('seconds_per_step'), '.3f'):>7} "
              f"{num(r.get('val_dice'), '.4f'):>9} {num(r.get('test_dice'), '.4f'):>9}")
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            by_variant.setdefault(r["variant"], []).append(r)
    for variant, done in by_variant.items():
        dice = [float(r["test_dice"]) for r in done if r.get("test_dice")]
        mean = f"{sum(dice) / len(dice):.4f}" if dice else "-"
        print(f"  {variant}: {len(done)} done, mean test Dice {mean}")
    failed = [r for r in rows if r["status"] != "done"]
    for r in failed:
        if r.get("error"):
            print(f"  {r['run']}: {r['status']}: {r['error'][:300]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bench": str(bench), "runs": rows}, indent=2) + "\n")
    return 0 if rows and not failed else 1


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wheels", help="download the pure-Python pipeline wheels (dev machine)")
    p.add_argument("--out", required=True)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (markers, wheel tags)")
    p.set_defaults(func=cmd_wheels)
    p = sub.add_parser("install-plan", help="carried wheels whose distribution is missing here")
    p.add_argument("--wheels", required=True)
    p.set_defaults(func=cmd_install_plan)
    p = sub.add_parser("env", help="versions, GPU, failed imports")
    p.add_argument("--need-cuda", action="store_true")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("throughput", help="training images/s and peak memory, baseline vs full, fp32 vs bf16")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--size", type=int, default=512, help="H = W (default 512, the preset's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--in-channels", type=int, default=1, help="1: grey-level like the Montgomery X-rays")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--variants", default="baseline,full")
    p.add_argument("--precisions", default="32-true,bf16-mixed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch intra-op threads")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds per configuration")
    p.add_argument("--start", choices=("fork", "spawn", "forkserver"), default=None)
    p.add_argument("--json", default=None, help="write the results here")
    p.set_defaults(func=cmd_throughput)
    p = sub.add_parser("summary", help="table of a benchmark folder's runs")
    p.add_argument("--bench", required=True)
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_summary)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
