"""A trained run exported in every format: export time, file size, agreement with PyTorch on the run's own test
images, and inference images/s of each runtime against PyTorch (CPU, batch 1).

For each format, ``dragsaw export`` (:func:`dragsaw.export.export_run`, which also checks random inputs) writes the
model; then every test image of the run, preprocessed as ``dragsaw predict`` does (the run's plan), goes through the
PyTorch model and the exported one: the largest absolute difference of the class probabilities and of the UAFS map,
and the share of pixels (voxels) whose predicted class differs. Speed: one warm-up pass, then ``--repeats`` passes
over the test images, one image at a time, in the same process and thread count.

    python benchmarks/export_run.py RUN [--formats onnx,torchscript,exported-program] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained run directory")
    parser.add_argument("--formats", default="onnx,torchscript,exported-program")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the test images")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from dragsaw.engine import load_task
    from dragsaw.engine.run import _run_data
    from dragsaw.export import _runner, export_run, reference_outputs

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    task, _ = load_task(run)
    task.eval()
    data = _run_data(task.config, run, existing=True, plan=task.plan)
    reader = task.plan.reader(value_map=task.config.data.value_map)
    images = [reader.read_input(case.image)["image"][None].float() for case in data.splits["test"]]
    print(f"run {run}: {task.config.model.name}, {len(images)} test images of {tuple(images[0].shape)}, "
          f"{args.threads} threads, torch {torch.__version__}")

    def rate(call) -> float:
        for x in images:  # warm-up
            call(x)
        started = time.perf_counter()
        for _ in range(args.repeats):
            for x in images:
                call(x)
        return args.repeats * len(images) / (time.perf_counter() - started)

    reference = [reference_outputs(task.model, x) for x in images]
    torch_rate = rate(lambda x: reference_outputs(task.model, x))
    rows = [{"format": "pytorch (eager, no_grad)", "images_per_s": torch_rate}]
    with tempfile.TemporaryDirectory() as folder:
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            path = Path(folder) / f"model.{ {'onnx': 'onnx', 'torchscript': 'pt', 'exported-program': 'pt2'}[fmt]}"
            record = export_run(run, fmt, path, log=None)
            call, runtime = _runner(fmt, path)
            dp = du = 0.0
            differ = total = 0
            for x, (ref_p, ref_u) in zip(images, reference):
                got_p, got_u = call(x)
                dp = max(dp, float((got_p.double() - ref_p.double()).abs().max()))
                du = max(du, float((got_u.double() - ref_u.double()).abs().max()))
                differ += int((got_p.argmax(1) != ref_p.argmax(1)).sum())
                total += ref_p[:, 0].numel()
            rows.append({"format": fmt, "runtime": runtime, "export_s": record["export_seconds"],
                         "file_mb": record["file_bytes"] / 1e6, "max_abs_diff_probabilities": dp,
                         "max_abs_diff_uncertainty": du, "pixels_differing": differ, "pixels": total,
                         "images_per_s": rate(call), "dynamic": record["dynamic"]})
    print("| format | runtime | export s | file MB | max abs diff p (test images) | max abs diff UAFS | pixels with "
          "another class | images/s | vs PyTorch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "export_s" not in r:
            print(f"| {r['format']} | | | | | | | {r['images_per_s']:.2f} | 1.00x |")
            continue
        print(f"| {r['format']} | {r['runtime']} | {r['export_s']:.1f} | {r['file_mb']:.2f} | "
              f"{r['max_abs_diff_probabilities']:.2g} | {r['max_abs_diff_uncertainty']:.2g} | "
              f"{r['pixels_differing']} of {r['pixels']} | {r['images_per_s']:.2f} | "
              f"{r['images_per_s'] / torch_rate:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
