"""Speed and memory of the core on CPU: label composition vs a naive loop, and the whole PDCR regulariser.

Run: ``.venv/bin/python benchmarks/core.py`` (prints figures; never passes or fails on time).

1. ``label_composition`` for 3 patch lengths (5, 7, 9) on a 2D batch 8 x 512 x 512 (stride 4) and a 3D batch
   2 x 128^3 (stride 8), against a per-location Python loop over the same locations.
2. ``PatchDragsawLoss`` forward + backward (gradients into the feature maps) with 4 tapped layers, N = 64 per
   layer, D = 256 channels, on the 2D batch, and its peak extra memory (resident set size, measured in a
   fresh process).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import platform
import time

import torch
from _memory import peak_extra_mib


def timeit(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def naive_composition(labels: torch.Tensor, num_classes: int, stride: int, patch: int, limit: int | None):
    """Per-location loop (slicing + bincount); returns the seconds per location over ``limit`` locations."""
    batch, *size = labels.shape
    grid = [math.ceil(n / stride) for n in size]
    locations = [(b, idx) for b in range(batch) for idx in range(math.prod(grid))]
    if limit is not None:
        locations = locations[:limit]
    start = time.perf_counter()
    for b, idx in locations:
        region = []
        for g, n in zip(reversed(grid), reversed(size)):
            i = idx % g
            idx //= g
            lo = i * stride - (patch - stride) // 2
            region.append(slice(max(lo, 0), min(lo + patch, n)))
        counts = torch.bincount(labels[b][tuple(reversed(region))].flatten(), minlength=num_classes)
        _ = counts.float() / counts.sum()
    return (time.perf_counter() - start) / len(locations), batch * math.prod(grid)


def bench_composition(shape, stride, limit, repeat):
    from dragsaw.pdcr import LabelIntegral, label_composition

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, shape, generator=gen)
    separate = timeit(lambda: [label_composition(labels, 2, stride, k) for k in (5, 7, 9)], repeat)
    dims = len(shape) - 1

    def shared():
        integral = LabelIntegral(labels, 2)
        return [integral.grid((stride,) * dims, (k,) * dims) for k in (5, 7, 9)]

    fast = timeit(shared, repeat)
    per_loc = sum(naive_composition(labels, 2, stride, k, limit)[0] for k in (5, 7, 9))
    locations = naive_composition(labels[:1], 2, stride, 5, 1)[1] * shape[0]
    slow = per_loc * locations
    print(
        f"label composition {shape} stride {stride}, patches 5/7/9:\n"
        f"  naive loop {slow:8.2f} s ({locations} locations x 3; per-location time from {limit or 'all'})\n"
        f"  3 label_composition calls {separate * 1e3:7.1f} ms (speed-up {slow / separate:,.0f}x) | "
        f"one LabelIntegral, 3 grids {fast * 1e3:7.1f} ms (speed-up {slow / fast:,.0f}x)"
    )


def _regulariser_case():
    from dragsaw.pdcr import PatchDragsawLoss

    torch.manual_seed(0)
    batch, size, dim = 8, 512, 256
    strides = {"enc2": 2, "enc4": 4, "dec4a": 4, "dec4b": 4}
    feats = {n: torch.randn(batch, dim, size // s, size // s, requires_grad=True) for n, s in strides.items()}
    labels = (torch.rand(batch, size, size) > 0.5).long()
    loss = PatchDragsawLoss(
        2, {n: 0.1 for n in strides}, samples=64, cross_layers=[("enc2", "enc4")],
        in_channels={"enc2": dim, "enc4": dim}, cross_samples=32, temperature=1.0,
    )
    return loss, feats, labels


def _step(loss, feats, labels, strides=None):
    for f in feats.values():  # fresh gradients each time, as a training step has (no accumulation)
        f.grad = None
    loss(feats, labels, strides).total.backward()


def _memory_worker(queue):
    """Peak resident memory above the idle level during one forward+backward."""
    torch.set_num_threads(2)
    loss, feats, labels = _regulariser_case()
    extra = peak_extra_mib(lambda: _step(loss, feats, labels))
    feature_bytes = sum(f.numel() * f.element_size() for f in feats.values())
    queue.put((extra, feature_bytes / 2**20))


def bench_regulariser(repeat):
    loss, feats, labels = _regulariser_case()
    total = timeit(lambda: _step(loss, feats, labels), repeat)
    forward = timeit(lambda: loss({n: f.detach() for n, f in feats.items()}, labels), repeat)
    # the same work on maps that hold only the sampled locations' worth of memory: what the regulariser itself
    # costs, without filling dense gradient maps (which a network's own backward allocates anyway)
    small = {n: torch.randn(8, 256, 20, 20, requires_grad=True) for n in feats}
    strides = {n: 512 // 20 + 1 for n in feats}
    own = timeit(lambda: _step(loss, small, labels, strides), repeat)
    print(
        "PatchDragsawLoss, 2D batch 8x512x512 labels, 4 layers N=64 D=256, patches 5/7/9, +1 cross term (N=32):\n"
        f"  forward+backward into dense maps at strides 2/4/4/4 {total * 1e3:7.1f} ms "
        f"(forward only {forward * 1e3:.1f} ms)\n"
        f"  forward+backward of the regulariser's own work (20x20 maps, same labels) {own * 1e3:7.1f} ms"
    )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_worker, args=(queue,))
    proc.start()
    extra, feature_mb = queue.get()
    proc.join()
    print(
        f"  peak extra resident memory of one forward+backward: {extra:.0f} MiB "
        f"(the four feature maps themselves: {feature_mb:.0f} MiB; their gradients are part of the extra)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-limit", type=int, default=20000,
                        help="locations timed in the naive loop (the per-location time is extrapolated)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {torch.get_num_threads()}")
    bench_composition((8, 512, 512), 4, args.naive_limit, args.repeat)
    bench_composition((2, 128, 128, 128), 8, args.naive_limit, args.repeat)
    bench_regulariser(args.repeat)


if __name__ == "__main__":
    main()
