"""Training and inference throughput, peak memory and PDCR's share of a step: baseline vs full (PDCR + UAFS).

Run: ``.venv/bin/python benchmarks/throughput.py [--device cpu|cuda] [--precision 32-true|bf16-mixed|16-mixed]
[--batch B] [--batch3d B] [--steps N] [--warmup N] [--size3d S] [--only NAME] [--compile] [--quick] [--json OUT]``.

Configurations (``--only`` picks them by name or by host, e.g. ``--only deeplabv3plus`` or ``--only unet-256``):

- ``deeplabv3plus-256``, ``deeplabv3plus-512``: the ``folder`` preset (DeepLabV3+ with aligned Xception, the paper's
  2D recipe and module settings) at ``--sizes2d`` (default 256 and 512);
- ``unet-256``: the ``folder`` preset's ``cpu`` profile (its small U-Net and that profile's module settings) at
  ``--unet-sizes``;
- ``dynunet-128``: the ``decathlon`` preset (nnU-Net-like DynUNet, deep supervision, the paper's 3D recipe) with
  cubic patches of ``--size3d`` (default 128; 64 is the smallest the default PDCR taps allow); its inference runs a
  sliding window over a ``--volume3d`` volume (default 1.5 x the patch) with the preset's overlap and mirroring.

Each in two variants (``--variants``, default ``baseline,full``: both modules off / both on, the rest as the preset
says). The variants of a configuration share one fresh process (fork on CPU, spawn with CUDA; ``--isolate``: one
process per variant). On a fixed synthetic batch (ellipse/ellipsoid foreground; 3 input channels in 2D, 1 in 3D):

1. memory, one variant after the other: build it (``SegmentationTask.from_config(config, in_channels,
   steps_per_epoch)``), one warm-up inference call, ``--warmup`` warm-up training steps; each phase's peak is taken
   above the level just before the variant was built: ``torch.cuda.max_memory_allocated`` minus the allocated bytes
   on GPU; on CPU the resident set size (``_memory.peak_extra_mib``; freed heap memory is handed back to the OS with
   ``malloc_trim`` before each phase, so that an earlier phase's freed memory does not hide a later peak). So the
   figure holds the model, its gradients and Adam state, activations and the batch, not torch itself (a throw-away
   primer, the last variant at 64 pixels/voxels a side for one step, runs first so that one-time allocations count
   in no variant);
2. inference: ``dragsaw.inference.infer`` (eval mode, no gradients, under the precision's autocast), ``--infer-steps``
   timed calls; images/s (2D) or voxels/s (3D; a sliding window over a ``--volume3d`` volume, one window = a patch);
3. training: ``training_step`` driven as Lightning's automatic optimisation does (zero_grad, training_step under
   autocast, backward, the engine's Adam step; 32-true through ``step_overhead.step``), ``--steps`` timed steps;
   median seconds a step, images/s or voxels/s. Timed calls and steps are interleaved across the variants (the order
   reversed every other round), so that noise from other work on the machine hits them alike;
4. PDCR's share: the time of the PDCR loss call inside the timed steps (forward, timed by hooks on the module) and
   forward + backward of the same call redone on the last step's features (detached leaves), over the step time.

Timing uses ``torch.cuda.synchronize`` on GPU and medians after warm-up. The ratio of the full step time over the
baseline's is printed against the goals (<= 1.10x in 2D, <= 1.15x in 3D). ``--compile`` sets ``train.compile`` when
the config has the key and compiles the host network in place (``nn.Module.compile``) unless the task already did.
``--quick`` is a smoke check in about a minute on 2 CPU cores (64x64 / 64^3, narrow hosts, 2 + 2 steps).

Prints a Markdown table with the machine (CPU model, torch, threads, GPU); ``--json OUT`` writes every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

GOALS = {2: 1.10, 3: 1.15}  # full-step / baseline-step time
QUICK_OPTIONS = {  # --quick: narrow networks (and no test-time mirroring), so that the smoke check takes seconds
    "deeplabv3plus": ["model.options={backbone: xception, width: 0.25, middle_blocks: 2}"],
    "dynunet": ["model.options={deep_supervision: 2, base_filters: 8, max_filters: 64}", "train.mirror=false"],
}


# --------------------------------------------------------------------------------------------- configurations
def configurations(args) -> list[dict]:
    """The configurations to measure, each ``{name, host, dims, preset, profile, size, batch, overrides}``."""
    specs = []
    for size in args.sizes2d:
        specs.append({"name": f"deeplabv3plus-{size}", "host": "deeplabv3plus", "dims": 2, "preset": "folder",
                      "profile": None, "size": [size, size], "batch": args.batch})
    for size in args.unet_sizes:
        specs.append({"name": f"unet-{size}", "host": "unet", "dims": 2, "preset": "folder", "profile": "cpu",
                      "size": [size, size], "batch": args.batch})
    if args.size3d:
        specs.append({"name": f"dynunet-{args.size3d}", "host": "dynunet", "dims": 3, "preset": "decathlon",
                      "profile": None, "size": [args.size3d] * 3, "batch": args.batch3d,
                      "volume": [args.volume3d or (args.size3d * 3 + 1) // 2] * 3})
    if args.only:
        wanted = {w.strip() for item in args.only for w in item.split(",") if w.strip()}
        unknown = wanted - {s["name"] for s in specs} - {s["host"] for s in specs}
        if unknown:
            sys.exit(f"--only: no configuration named {sorted(unknown)}; these are: "
                     f"{', '.join(s['name'] for s in specs)} (or a host: deeplabv3plus, unet, dynunet)")
        specs = [s for s in specs if s["name"] in wanted or s["host"] in wanted]
    for spec in specs:
        spec["extra"] = (QUICK_OPTIONS.get(spec["host"], []) if args.quick else []) + args.set
    return specs


def build_config(spec: dict, variant: str, precision: str, compile_: bool):
    """The run configuration of a (configuration, variant): preset (+ profile), size, batch, variant switches."""
    from dragsaw.benchmark.harness import BUILTIN_VARIANTS
    from dragsaw.config import apply_overrides, load_preset

    config = load_preset(spec["preset"], spec["profile"])
    overrides = [f"data.input_size={spec['size']}", f"train.precision={precision}"]
    if spec["batch"]:
        overrides.append(f"train.batch_size={spec['batch']}")
    if compile_ and "compile" in {f.name for f in dataclasses.fields(config.train)}:
        overrides.append("train.compile=true")  # the engine's own switch, where it has one
    return apply_overrides(config, [*overrides, *spec["extra"], *BUILTIN_VARIANTS[variant]])


# --------------------------------------------------------------------------------------------- data
def blob_volume(batch: int, size, channels: int, num_classes: int):
    """Volumes ``[B, C, *S]`` and labels ``[B, *S]``: nested ellipsoids (classes 1..K-1), noise, fixed seed."""
    import torch

    generator = torch.Generator().manual_seed(0)
    axes = torch.meshgrid(*[torch.linspace(-1.0, 1.0, n) for n in size], indexing="ij")
    centre = (torch.rand(batch, 3, generator=generator) - 0.5) * 0.5
    radius = 0.35 + torch.rand(batch, 3, generator=generator) * 0.3
    dist = sum(((a - centre[:, i, None, None, None]) / radius[:, i, None, None, None]) ** 2 for i, a in enumerate(axes))
    labels = torch.zeros(batch, *size, dtype=torch.long)
    for k in range(1, num_classes):
        labels[dist < (1.0 - (k - 1) / num_classes) ** 2] = k
    noise = 0.5 * torch.randn(batch, channels, *size, generator=generator)
    return (labels[:, None].float().expand(-1, channels, *size) + noise).contiguous(), labels


def make_data(spec: dict, config, channels: int) -> tuple[dict, object]:
    """The training batch ``{"image", "label"}`` and the inference input (2D: the same images; 3D: one volume)."""
    from gpu import _blob_batch

    batch = config.train.batch_size
    if spec["dims"] == 2:
        images, labels = _blob_batch(batch, spec["size"][0], channels)
        if config.data.num_classes > 2:
            labels = labels.clamp(max=config.data.num_classes - 1)
        return {"image": images, "label": labels}, images
    images, labels = blob_volume(batch, spec["size"], channels, config.data.num_classes)
    volume, _ = blob_volume(1, spec["volume"], channels, config.data.num_classes)
    return {"image": images, "label": labels}, volume


# --------------------------------------------------------------------------------------------- one configuration
def _measure(job: dict, out) -> None:
    """Child process: measure one (configuration, variant) and put a dict on ``out``."""
    try:
        out.put(_measure_inner(job))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        out.put({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so a later RSS peak is not hidden by it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Variant:
    """One variant of a configuration in the measuring process: its task, optimizer, step and inference calls."""

    def __init__(self, job: dict, variant: str, device, sync) -> None:
        import torch

        from dragsaw.engine import SegmentationTask
        from dragsaw.inference import InferenceSettings

        spec = job["spec"]
        self.name, self.job, self.device, self.sync = variant, job, device, sync
        self.config = config = build_config(spec, variant, job["precision"], job["compile"])
        channels = 3 if spec["dims"] == 2 else 1
        torch.manual_seed(0)
        task = SegmentationTask.from_config(config, in_channels=channels, steps_per_epoch=job["steps_per_epoch"])
        task.log_dict = lambda *a, **k: None  # no trainer attached: logging is a no-op here (as in step_overhead)
        task.log = lambda *a, **k: None
        task.to(device)
        self.compiled_by = None
        if job["compile"]:
            if type(task.model).__name__ == "OptimizedModule" or getattr(task.model, "_compiled_call_impl", None):
                self.compiled_by = "engine"
            else:
                task.model.compile()  # in place: submodule names (PDCR taps, UAFS blocks) stay valid
                self.compiled_by = "benchmark"
        self.task = task
        self.optimizer = task.configure_optimizers()["optimizer"]  # the engine's Adam with its settings
        batch, infer_input = make_data(spec, config, channels)
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.infer_input = infer_input.to(device)
        self.settings = InferenceSettings.from_config(config)
        self.dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(job["precision"])
        self.scaler = torch.amp.GradScaler(device.type) if job["precision"] == "16-mixed" else None
        self.step_times, self.infer_times, self.pdcr_fwd, self.captured = [], [], [], {}
        self.timing, self.keep, self.t0 = False, False, 0.0
        if task.pdcr is not None:  # the PDCR call, timed by hooks during the timed steps; inputs kept when asked
            task.pdcr.register_forward_pre_hook(self._pdcr_before)
            task.pdcr.register_forward_hook(self._pdcr_after)
        self.result = {
            "params_m": sum(p.numel() for p in task.model.parameters()) / 1e6,
            "pdcr_params_m": sum(p.numel() for p in task.pdcr.parameters()) / 1e6 if task.pdcr is not None else 0.0,
            "batch": config.train.batch_size, "in_channels": channels, "compiled_by": self.compiled_by,
            "infer_input": list(self.infer_input.shape),
            "sliding_window": None if spec["dims"] == 2 else {
                "roi": list(self.settings.roi_size), "overlap": self.settings.overlap,
                "sw_batch_size": self.settings.sw_batch_size, "mirror": self.settings.mirror}}

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def _pdcr_before(self, module, args):
        if self.timing:
            self.sync()
            self.t0 = time.perf_counter()
        if self.keep:
            self.captured["args"] = args

    def _pdcr_after(self, module, args, output):
        if self.timing:
            self.sync()
            self.pdcr_fwd.append(time.perf_counter() - self.t0)

    def train_step(self) -> None:
        from step_overhead import step as fp32_step

        task, optimizer = self.task, self.optimizer
        task.train()
        if self.dtype is None:
            fp32_step(task, optimizer, self.batch)  # step_overhead.py: zero_grad, training_step, backward, step
            return
        optimizer.zero_grad(set_to_none=True)
        with self.autocast():  # Lightning's MixedPrecision: autocast around training_step only
            loss = task.training_step(self.batch, 0)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def infer(self) -> None:
        from dragsaw.inference import infer

        self.task.eval()
        with self.autocast():
            infer(self.task.model, self.infer_input, self.settings)

    def timed(self, fn, times: list, *, last: bool = False) -> None:
        self.timing, self.keep = fn == self.train_step, last and fn == self.train_step
        try:
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        finally:
            self.timing = self.keep = False

    def pdcr_fwd_bwd(self) -> None:
        """The PDCR call and its backward into the tapped features, on the last timed step's features (leaves)."""
        features, labels, strides = self.captured.pop("args")
        leaves = {k: v.detach().requires_grad_(True) for k, v in features.items()}

        def once():
            for tensor in [*leaves.values(), *self.task.pdcr.parameters()]:
                tensor.grad = None
            with self.autocast():
                total = self.task.pdcr(leaves, labels, strides).total
            total.backward()

        once()
        both: list[float] = []
        for _ in range(max(self.job["steps"], 3)):
            self.sync()
            start = time.perf_counter()
            once()
            self.sync()
            both.append(time.perf_counter() - start)
        self.result |= {"pdcr_fwd_bwd_s": statistics.median(both), "pdcr_fwd_bwd_times_s": both,
                        "pdcr_layers": {k: list(v.shape) for k, v in features.items()}}

    def finish(self) -> dict:
        spec, r = self.job["spec"], self.result
        step, infer_s = statistics.median(self.step_times), statistics.median(self.infer_times)
        voxels = 1 if spec["dims"] == 2 else self.batch["image"][0, 0].numel()
        infer_voxels = 1 if spec["dims"] == 2 else self.infer_input[0, 0].numel()
        r |= {"step_s": step, "step_times_s": self.step_times, "train_per_s": r["batch"] * voxels / step,
              "infer_s": infer_s, "infer_times_s": self.infer_times,
              "infer_per_s": self.infer_input.shape[0] * infer_voxels / infer_s}
        if self.pdcr_fwd:
            fwd = statistics.median(self.pdcr_fwd)
            r |= {"pdcr_fwd_s": fwd, "pdcr_fwd_times_s": self.pdcr_fwd, "pdcr_fwd_share": fwd / step}
            if "pdcr_fwd_bwd_s" in r:
                r["pdcr_fwd_bwd_share"] = r["pdcr_fwd_bwd_s"] / step
        return r


def _measure_inner(job: dict) -> dict:
    """Measure the variants ``job["variants"]`` of one configuration in this process.

    Memory (sequential, one variant at a time): build the variant, run the inference warm-up call, then the training
    warm-up steps, each phase's peak taken above the level just before the variant was built (CUDA: allocated
    bytes; CPU: resident set size, with freed heap memory trimmed first). Timing (interleaved): rounds of one timed
    inference call / training step per variant, the order reversed every other round, so that machine noise hits
    all variants alike.
    """
    import torch
    from _memory import peak_extra_mib, resident_mib

    device = torch.device(job["device"])
    cuda = device.type == "cuda"
    if job["threads"]:
        torch.set_num_threads(job["threads"])

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def allocated_mib():
        return torch.cuda.memory_allocated(device) / 2**20 if cuda else resident_mib()

    def peak_above(work, base: float) -> tuple[float, float]:
        """(peak MiB above ``base``, absolute peak MiB) while ``work()`` runs."""
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            work()
            sync()
            top = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            _trim_heap()
            before = resident_mib()
            top = before + peak_extra_mib(work)
        return top - base, top

    # a throw-away primer (the last variant, small input, 1 step): the process's one-time allocations (thread pools,
    # lazily loaded code, autograd engine) then count in no variant's peak, not only in the first one's
    small = 64
    primer_spec = {**job["spec"], "size": [small] * job["spec"]["dims"], "batch": 2 if job["spec"]["dims"] == 2 else 1,
                   "volume": [small] * 3}
    primer = _Variant({**job, "spec": primer_spec, "compile": False}, job["variants"][-1], device, sync)
    primer.infer()
    primer.train_step()
    del primer
    gc.collect()
    variants: list[_Variant] = []
    for name in job["variants"]:
        _trim_heap()
        sync()
        base = allocated_mib()
        start = time.perf_counter()
        holder: list[_Variant] = []
        build_mib, _ = peak_above(lambda: holder.append(_Variant(job, name, device, sync)), base)
        v = holder[0]
        infer_mib, infer_abs = peak_above(lambda: [v.infer() for _ in range(min(job["warmup"], 1))], base)
        train_mib, train_abs = peak_above(lambda: [v.train_step() for _ in range(job["warmup"])], base)
        v.result |= {"build_peak_mib": build_mib, "infer_peak_mib": infer_mib, "infer_peak_abs_mib": infer_abs,
                     "train_peak_mib": train_mib, "train_peak_abs_mib": train_abs, "memory_base_mib": base,
                     "memory_steps": job["warmup"], "warmup_wall_s": time.perf_counter() - start}
        variants.append(v)
    for i in range(job["infer_steps"]):
        for v in variants if i % 2 == 0 else variants[::-1]:
            v.timed(v.infer, v.infer_times)
    for i in range(job["steps"]):
        for v in variants if i % 2 == 0 else variants[::-1]:
            v.timed(v.train_step, v.step_times, last=i == job["steps"] - 1)
    for v in variants:
        if v.captured:
            v.pdcr_fwd_bwd()
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    return {"variants": {v.name: {**v.finish(), "device_name": device_name} for v in variants},
            "threads": torch.get_num_threads()}


def run_isolated(job: dict, timeout: float, start_method: str) -> dict:
    """``_measure(job)`` in a fresh process, killed after ``timeout`` seconds."""
    from gpu import run_in_process

    return run_in_process(_measure, job, timeout, start_method)


# --------------------------------------------------------------------------------------------- report
def machine(args, device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": args.threads or torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "device": device, "gpu": None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _rate(value: float, dims: int) -> str:
    return f"{value:.2f} img/s" if dims == 2 else f"{value / 1e6:.2f} Mvox/s"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def report(results: list[dict], info: dict, args) -> tuple[str, dict]:
    """The Markdown table and the full/baseline ratios ``{config: {...}}``."""
    unit = "MiB alloc" if info["device"] == "cuda" else "MiB RSS"  # above the level before the variant's build
    where = (f"{info['gpu']} (CUDA {info['cuda']})" if info["gpu"] else f"{info['cpu']}, {info['threads']} threads "
             f"of {info['cpu_count']} CPUs")
    lines = [f"**Machine:** {where}; torch {info['torch']}, Python {info['python']}; {info['platform']}; "
             f"precision {args.precision}{', torch.compile' if args.compile else ''}; {args.warmup} warm-up + "
             f"{args.steps} timed training steps, {args.infer_steps} timed inference calls, medians; {info['date']}",
             "",
             f"| config | variant | batch | params M | train s/step | train throughput | x base | PDCR fwd | "
             f"PDCR fwd+bwd | infer s | infer throughput | train peak {unit} | infer peak {unit} |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["config"]: r for r in results if r["variant"] == "baseline" and "error" not in r}
    ratios = {}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['variant']} | FAILED: {r['error'][:200]} |" + " |" * 10)
            continue
        ref = base.get(r["config"])
        ratio = r["step_s"] / ref["step_s"] if ref else None
        dims = r["dims"]
        shape = f"{r['batch']}" + ("" if dims == 2 else f" x {r['size'][0]}^3")
        infer_shape = "" if dims == 2 else f" ({'x'.join(map(str, r['infer_input'][2:]))} vol.)"
        lines.append(
            f"| {r['config']} | {r['variant']} | {shape} | {r['params_m']:.2f} | {r['step_s']:.3f} | "
            f"{_rate(r['train_per_s'], dims)} | {'' if ratio is None else f'{ratio:.2f}x'} | "
            f"{_pct(r.get('pdcr_fwd_share'))} | {_pct(r.get('pdcr_fwd_bwd_share'))} | "
            f"{r['infer_s']:.3f}{infer_shape} | "
            f"{_rate(r['infer_per_s'], dims)} | {r['train_peak_mib']:.0f} | {r['infer_peak_mib']:.0f} |")
        if ratio is not None and r["variant"] != "baseline":
            goal = GOALS[dims]
            ratios[f"{r['config']}/{r['variant']}"] = {
                "step_ratio": ratio, "goal": goal, "met": ratio <= goal,
                "memory_ratio": r["train_peak_mib"] / ref["train_peak_mib"],
                "infer_ratio": r["infer_s"] / ref["infer_s"]}
    lines.append("")
    lines.append("Step time over the baseline's (goal: <= 1.10x in 2D, <= 1.15x in 3D):")
    lines.append("")
    for name, q in ratios.items():
        lines.append(f"- {name}: **{q['step_ratio']:.2f}x** (goal <= {q['goal']:.2f}x: "
                     f"{'met' if q['met'] else 'NOT met'}); training peak memory {q['memory_ratio']:.2f}x, "
                     f"inference time {q['infer_ratio']:.2f}x")
    lines.append("")
    memory = ("torch.cuda.max_memory_allocated" if info["device"] == "cuda" else
              "the process's resident set size (freed heap trimmed before each phase)")
    lines.append(
        "PDCR fwd: median time of the PDCR loss call inside the timed steps over the median step; PDCR fwd+bwd: that "
        "call plus its backward into the tapped features, redone on the last step's features, over the median step. "
        "Throughput: images/s (2D) or voxels/s (3D) of the training batch; inference: `dragsaw.inference.infer` on "
        "the batch (2D) or a sliding window over one volume (3D). Peaks: " + memory + " above the level before the "
        "variant was built (model, gradients, Adam state, activations, batch), over the warm-up inference call and "
        f"the {args.warmup} warm-up training step(s). Timed steps "
        + ("ran in one process per variant, one variant after the other." if args.isolate else
           "of the variants were interleaved in one process per configuration."))
    return "\n".join(lines), ratios


# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Configurations: deeplabv3plus-<size2d>, unet-<unet size>, "
                                            "dynunet-<size3d>.")
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed", "16-mixed"), default="32-true",
                        help="Lightning's names; mixed = torch.autocast around training_step (16-mixed: with a "
                             "GradScaler)")
    parser.add_argument("--batch", type=int, default=None, help="2D training batch (default: the preset's)")
    parser.add_argument("--batch3d", type=int, default=None, help="3D training batch (default: the preset's, 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; --quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-up steps, over which training memory is measured (default 3; --quick 2; "
                             ">= 2 so that the optimizer state is in the peak)")
    parser.add_argument("--infer-steps", type=int, default=None, help="timed inference calls (default 5; --quick 1)")
    parser.add_argument("--sizes2d", type=ints, default=None,
                        help="DeepLabV3+ sizes, comma-separated (default 256,512)")
    parser.add_argument("--unet-sizes", type=ints, default=None, help="U-Net sizes (default 256; empty: none)")
    parser.add_argument("--size3d", type=int, default=None, help="3D patch edge (default 128; >= 64; 0: no 3D)")
    parser.add_argument("--volume3d", type=int, default=None, help="3D inference volume edge (default 1.5 x patch)")
    parser.add_argument("--variants", default="baseline,full", help="built-in variants: baseline, pdcr, uafs, full")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="configuration name or host (repeat or comma-separate)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the host network before timing (give --warmup >= 3: the first train "
                             "and eval calls compile, and switches such as UAFS's recording may recompile)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 2D 64x64, 3D 64^3 with narrow networks, 2 warm-up + 2 steps")
    parser.add_argument("--isolate", action="store_true",
                        help="one process per variant (default: the variants of a configuration share one process, "
                             "their timed steps interleaved; memory is per variant either way)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every configuration (e.g. train.mirror=false)")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="for the task's schedules")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration and variant")
    parser.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    parser.add_argument("--markdown", metavar="OUT", help="also write the table to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"steps": 2 if quick else 10, "warmup": 2 if quick else 3, "infer_steps": 1 if quick else 5,
                "sizes2d": [64] if quick else [256, 512], "unet_sizes": [64] if quick else [256],
                "size3d": 64 if quick else 128, "batch": 2 if quick else None, "batch3d": 1 if quick else None,
                "volume3d": 80 if quick else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup < 1 or args.infer_steps < 1:
        parser.error("--steps, --warmup and --infer-steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device is None:  # the NVML check initialises no CUDA context in this (forking) parent
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch  # imported once here, shared by forked children

    import dragsaw.engine  # noqa: F401

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    start_method = "fork" if device == "cpu" and sys.platform.startswith("linux") else "spawn"
    specs = configurations(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    groups = [[v] for v in variants] if args.isolate else [variants]
    print(f"[throughput] {len(specs)} configuration(s) x {variants} on {device}, precision {args.precision}, "
          f"{'one process per variant' if args.isolate else 'variants interleaved in one process'} per "
          f"configuration ({start_method})", flush=True)
    results, threads = [], None
    for spec in specs:
        for group in groups:
            job = {"spec": spec, "variants": group, "precision": args.precision, "device": device,
                   "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
                   "infer_steps": args.infer_steps, "compile": args.compile,
                   "steps_per_epoch": args.steps_per_epoch}
            started = time.perf_counter()
            out = run_isolated(job, args.timeout * len(group), start_method)
            wall = time.perf_counter() - started
            threads = out.get("threads", threads)
            for variant in group:
                result = {"config": spec["name"], "variant": variant, "dims": spec["dims"], "size": spec["size"],
                          "host": spec["host"], "overrides": spec["extra"],
                          **(out["variants"][variant] if "variants" in out else out), "process_wall_s": wall}
                results.append(result)
                if "error" in result:
                    print(f"[throughput] {spec['name']} {variant}: FAILED {result['error']}", flush=True)
                    print(result.get("traceback", ""), flush=True)
                else:
                    print(f"[throughput] {spec['name']} {variant}: step {result['step_s']:.3f} s, "
                          f"{_rate(result['train_per_s'], spec['dims'])} training, "
                          f"{_rate(result['infer_per_s'], spec['dims'])} inference ({wall:.0f} s wall)", flush=True)
    args.threads = args.threads or threads
    info = machine(args, device)
    table, ratios = report(results, info, args)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        payload = {"machine": info, "args": vars(args), "results": results, "ratios": ratios}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\n[throughput] wrote {args.json}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
