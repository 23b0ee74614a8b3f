"""Inference speed of an exported ONNX model (onnxruntime, CPU, 2 threads) vs the PyTorch model, 2D, 256x256, batch 1.

The model is the ``folder`` preset's ``cpu`` profile (U-Net [16, 32, 64, 128, 256] with UAFS, 3-channel input,
256x256), untrained: speed does not depend on the weights. Prints images/s of both, the export time (ONNX export
plus nothing else) and the file size. Uses the same wrapper as ``dragsaw export`` (probabilities + UAFS map).

    python benchmarks/export_speed.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort

    from dragsaw.config import apply_overrides, load_preset
    from dragsaw.engine.task import SegmentationTask
    from dragsaw.export import INPUT_NAME, OUTPUT_NAMES, ExportWrapper, _make, reference_outputs

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = apply_overrides(load_preset("folder", "cpu"), ["data.input_size=[256, 256]"])
    task = SegmentationTask.from_config(config, in_channels=3).eval()
    model = task.model
    size = (256, 256)
    wrapper = ExportWrapper(model, 2, (1, 3, *size)).eval()
    x = torch.randn(1, 3, *size)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        started = time.perf_counter()
        _make("onnx", wrapper, torch.randn(2, 3, *size), torch.randn(1, 3, 264, 264), path, None)
        export_s = time.perf_counter() - started
        size_mb = os.path.getsize(path) / 1e6
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: x.numpy()}

        def onnx_call():
            return session.run(list(OUTPUT_NAMES), feed)

        def torch_call():
            return reference_outputs(model, x)

        def rate(call) -> float:
            for _ in range(3):
                call()
            started = time.perf_counter()
            for _ in range(args.repeats):
                call()
            return args.repeats / (time.perf_counter() - started)

        probs, _ = onnx_call()
        diff = float((torch.from_numpy(probs) - torch_call()[0]).abs().max())
        onnx_rate, torch_rate = rate(onnx_call), rate(torch_call)
    print(f"2D U-Net [16..256] + UAFS, input 1x3x256x256, {args.threads} threads, {args.repeats} repeats")
    print(f"PyTorch {torch.__version__} (eager, no_grad): {torch_rate:.2f} images/s")
    print(f"onnxruntime {ort.__version__} (CPUExecutionProvider): {onnx_rate:.2f} images/s "
          f"({onnx_rate / torch_rate:.2f}x)")
    print(f"ONNX export: {export_s:.1f} s, {size_mb:.2f} MB; max |diff| probabilities {diff:.2g}")


if __name__ == "__main__":
    main()
