"""Seconds per training step of the full model (PDCR + UAFS) over the baseline: same host, batch and input.

Run: ``.venv/bin/python benchmarks/step_overhead.py [--host unet|deeplab] [--size 256] [--batch 8]``.
One step = forward, loss (CE + PDCR terms), backward and an Adam update, through the same
``SegmentationTask.training_step`` the engine uses; steps of the variants are interleaved so that machine noise
hits them alike. Prints the median of each variant and the ratio (goal: <= 1.15x on CPU).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.demo import variant_overrides
from dragsaw.engine import SegmentationTask

HOSTS = {
    "unet": ["model.name=unet", "model.options={channels: [16, 32, 64, 128, 256]}"],
    "deeplab": ["model.name=deeplabv3plus", "model.options={backbone: xception, width: 0.5, middle_blocks: 4}"],
}


def make_task(host: str, variant: str, size: int) -> tuple[SegmentationTask, torch.optim.Optimizer]:
    config = apply_overrides(load_preset("folder", "cpu"), [*HOSTS[host], f"data.input_size=[{size}, {size}]",
                                                            *variant_overrides(variant)])
    torch.manual_seed(0)
    task = SegmentationTask.from_config(config, in_channels=3)
    task.log_dict = lambda *a, **k: None  # no trainer attached: logging is a no-op here
    task.log = lambda *a, **k: None
    return task, torch.optim.Adam(task.parameters(), lr=1e-4)


def step(task, optimizer, batch) -> None:
    optimizer.zero_grad(set_to_none=True)
    task.training_step(batch, 0).backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=sorted(HOSTS), default="unet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variants", nargs="+", default=["baseline", "+PDCR", "+UAFS", "+PDCR+UAFS"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(args.batch, 3, args.size, args.size, generator=generator),
        "label": (torch.rand(args.batch, args.size, args.size, generator=generator) > 0.7).long(),
    }
    tasks = {v: make_task(args.host, v, args.size) for v in args.variants}
    for task, optimizer in tasks.values():
        task.train()
        step(task, optimizer, batch)  # warm-up
    times = {v: [] for v in tasks}
    for _ in range(args.steps):
        for variant, (task, optimizer) in tasks.items():
            start = time.perf_counter()
            step(task, optimizer, batch)
            times[variant].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; host {args.host}, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, median of {args.steps} steps")
    base = sorted(times[args.variants[0]])[args.steps // 2]
    for variant, values in times.items():
        median = sorted(values)[args.steps // 2]
        print(f"  {variant:<12} {median:7.3f} s/step   x{median / base:5.2f} of {args.variants[0]}")


if __name__ == "__main__":
    main()
