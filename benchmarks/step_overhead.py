"""Seconds per training step and peak memory of the full model (PDCR + UAFS) over the baseline.

Run: ``.venv/bin/python benchmarks/step_overhead.py [--dims 2|3] [--host unet|deeplab] [--size N] [--batch B]``.
One step = forward, loss (CE + Dice + PDCR terms, deep supervision in 3D), backward and an Adam update, through
the same ``SegmentationTask.training_step`` the engine uses, on a fixed random batch. Steps of the variants are
interleaved so that machine noise hits them alike; peak memory is measured per variant in a fresh process (peak
resident set size above the process's size before the first step). Prints medians and ratios (goal <= 1.15x).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import time

import torch
from _memory import peak_extra_mib

from dragsaw.config import apply_overrides, load_preset
from dragsaw.demo import variant_overrides
from dragsaw.engine import SegmentationTask

HOSTS = {
    "unet": ["model.name=unet", "model.options={channels: [16, 32, 64, 128, 256]}"],
    "deeplab": ["model.name=deeplabv3plus", "model.options={backbone: xception, width: 0.5, middle_blocks: 4}"],
    "dynunet": [],  # the decathlon preset's CPU profile
}


def make_task(args, variant: str) -> tuple[SegmentationTask, torch.optim.Optimizer]:
    if args.dims == 3:
        size = [args.size, args.size, args.size * 2 // 3]
        config = apply_overrides(load_preset("decathlon", "cpu"), [
            f"data.input_size={size}", "data.target_spacing=[1.0, 1.0, 2.5]", "data.num_classes=3",
            *variant_overrides(variant)])
    else:
        config = apply_overrides(load_preset("folder", "cpu"), [*HOSTS[args.host], f"data.input_size=[{args.size}, {args.size}]",
                                                                *variant_overrides(variant)])
    torch.manual_seed(0)
    task = SegmentationTask.from_config(config, in_channels=2 if args.dims == 3 else 3)
    task.log_dict = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    task.log = lambda *a, **k: None
    task.train()
    return task, torch.optim.Adam(task.parameters(), lr=1e-4)


def make_batch(args) -> dict:
    generator = torch.Generator().manual_seed(0)
    if args.dims == 3:
        size = (args.size, args.size, args.size * 2 // 3)
        return {"image": torch.randn(args.batch, 2, *size, generator=generator),
                "label": torch.randint(0, 3, (args.batch, *size), generator=generator)}
    size = (args.size, args.size)
    return {"image": torch.randn(args.batch, 3, *size, generator=generator),
            "label": (torch.rand(args.batch, *size, generator=generator) > 0.7).long()}


def step(task, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    task.training_step(batch, 0).backward()
    optimizer.step()


def _memory(args, variant, queue) -> None:
    """Peak resident memory above the idle level during two steps (after a first step built the optimizer state)."""
    torch.set_num_threads(args.threads)
    task, optimizer = make_task(args, variant)
    batch = make_batch(args)
    step(task, optimizer, batch)
    optimizer.zero_grad(set_to_none=True)
    queue.put(peak_extra_mib(lambda: [step(task, optimizer, batch) for _ in range(2)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--host", choices=sorted(HOSTS), default="unet", help="2D host")
    parser.add_argument("--size", type=int, default=None, help="2D: H = W (default 256); 3D: X = Y (default 48)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (2D) / 2 (3D)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["baseline", "+PDCR", "+UAFS", "+PDCR+UAFS"])
    args = parser.parse_args()
    args.size = args.size or (48 if args.dims == 3 else 256)
    args.batch = args.batch or (2 if args.dims == 3 else 8)
    torch.set_num_threads(args.threads)
    batch = make_batch(args)
    tasks = {v: make_task(args, v) for v in args.variants}
    for task, optimizer in tasks.values():
        step(task, optimizer, batch)  # warm-up
    times = {v: [] for v in tasks}
    for _ in range(args.steps):
        for variant, (task, optimizer) in tasks.items():
            start = time.perf_counter()
            step(task, optimizer, batch)
            times[variant].append(time.perf_counter() - start)
    ctx = mp.get_context("spawn")
    memory = {}
    for variant in args.variants:
        queue = ctx.Queue()
        proc = ctx.Process(target=_memory, args=(args, variant, queue))
        proc.start()
        memory[variant] = queue.get()
        proc.join()
    shape = "x".join(str(v) for v in batch["image"].shape)
    host = "dynunet (decathlon cpu profile)" if args.dims == 3 else args.host
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads; host {host}, batch {shape}, "
          f"median of {args.steps} interleaved steps")
    base_t = sorted(times[args.variants[0]])[args.steps // 2]
    base_m = memory[args.variants[0]]
    for variant in args.variants:
        median = sorted(times[variant])[args.steps // 2]
        print(f"  {variant:<12} {median:7.3f} s/step  x{median / base_t:5.2f}   peak +{memory[variant]:7.0f} MiB  "
              f"x{memory[variant] / base_m:5.2f}")


if __name__ == "__main__":
    main()
