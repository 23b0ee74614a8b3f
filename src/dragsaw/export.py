"""Export a trained run as a self-contained model: ONNX, TorchScript or a ``torch.export`` program (docs/export.md).

The exported model takes the *preprocessed* network input ``image`` ``[B, C, *S]`` (float32, channels first,
normalised as the run's plan says) and returns two tensors:

* ``probabilities`` ``[B, K, *S]``: the softmax of the host's main (full-resolution) logits;
* ``uncertainty`` ``[B, 1, *S]``: the finest UAFS map resized (bi/trilinear, ``align_corners=False``) to ``S`` and
  clamped to [0, 1], as :func:`dragsaw.inference.finest_uncertainty` makes it. A model without UAFS returns a map of
  zeros there (the interface stays the same; ``FILE.json`` says ``"uafs": false``).

A wrapper module (:class:`ExportWrapper`) computes both from a copy of the network whose UAFS blocks hand their map
to the wrapper directly, so the exported graph holds no forward hooks and no ``record`` state; PDCR (a training
loss) is never part of it. Test-time mirroring and the sliding window of 3D inference are not part of the graph:
3D callers run it window by window (``input_size`` in ``FILE.json``), as ``dragsaw predict`` does.

Every export is verified before it appears: the exported file is loaded back (ONNX through onnxruntime's
CPUExecutionProvider, TorchScript through ``torch.jit.load``, the program through ``torch.export.load``) and run
on the same seeded random input as the PyTorch model; the largest absolute difference of the probabilities and of
the uncertainty must stay within :data:`TOLERANCE`. ``FILE`` and ``FILE.json`` are written through temporary
names and renamed only then, so a failed export leaves nothing new at ``FILE`` (an earlier file there stays as it
was).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._atomic import write_json_atomic
from .errors import ConfigError, DragsawError
from .uafs import UncertaintySelect, entropy_map

__all__ = ["FORMATS", "TOLERANCE", "INPUT_NAME", "OUTPUT_NAMES", "ExportWrapper", "ExportError", "export_run",
           "check_export_dependencies"]

AXIS_NAMES = {2: ("height", "width"), 3: ("x", "y", "z")}
"""Names of the dynamic spatial axes of an exported model's input, by number of spatial axes."""

FORMATS = ("onnx", "torchscript", "exported-program")
"""``--format`` values."""

TOLERANCE = {"probabilities": 1e-4, "uncertainty": 1e-4}
"""Largest allowed absolute difference between the exported model and the PyTorch model (float32, CPU).

Both outputs lie in [0, 1]. The two sides run the same float32 arithmetic with other kernels and summation orders
(oneDNN / MLAS, fused or not), which moves logits by a few 1e-6 relative; the softmax's slope is at most 1/4, so
such differences give probability differences of about 1e-6. 1e-4 leaves a margin of about 100x for deeper
networks while staying far below anything visible: an arg-max can change only where two classes are within 1e-4
of each other. The uncertainty (an entropy, then a convex interpolation) gets the same bound.
"""

INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "uncertainty")
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
_INSTALL = 'pip install "dragsaw[export]"'


class ExportError(DragsawError):
    """An export that could not be made or did not pass its verification (exit code 2)."""


# ------------------------------------------------------------------ the wrapper
class _UafsProbe(nn.Module):
    """Stands in for an :class:`UncertaintySelect` in the exported copy: the same ``x * (2 - H)``, and ``H`` handed
    to the wrapper's ``sink`` under the block's index (no ``record`` attribute, no hook)."""

    def __init__(self, block: UncertaintySelect, index: int) -> None:
        super().__init__()
        self.block = block
        self.index = index
        self.sink: dict[int, torch.Tensor] = {}  # bound by the wrapper at every call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = entropy_map(self.block.head(x))
        self.sink[self.index] = h
        return x * (2.0 - h)


class ExportWrapper(nn.Module):
    """``image [B, C, *S] -> (probabilities [B, K, *S], uncertainty [B, 1, *S])`` of a host network.

    Args:
        model: the trained host (``task.model``); it is copied (in eval mode, float32, contiguous memory format,
            without forward hooks), never changed.
        spatial_dims: 2 or 3.
        probe_shape: a valid input shape ``[1, C, *S]``; one forward at it finds the finest UAFS block (the one
            with the most locations, first in module order on ties, as
            :func:`dragsaw.inference.finest_uncertainty` chooses).
    """

    def __init__(self, model: nn.Module, spatial_dims: int, probe_shape: tuple[int, ...]) -> None:
        super().__init__()
        net = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
        for module in net.modules():  # e.g. the channels-last pre-hook of training; taps are never attached here
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
        blocks = [name for name, m in net.named_modules() if isinstance(m, UncertaintySelect)]
        for index, name in enumerate(blocks):
            parent, _, child = name.rpartition(".")
            owner = net.get_submodule(parent) if parent else net
            setattr(owner, child, _UafsProbe(getattr(owner, child), index))
        self.net = net
        self.spatial_dims = int(spatial_dims)
        self.uafs_blocks = len(blocks)
        self.finest: int | None = None
        if blocks:
            with torch.no_grad():
                maps = self._bind({})
                self.net(torch.zeros(probe_shape))
                self._bind({})
            sizes = {i: h[0, 0].numel() for i, h in sorted(maps.items())}
            self.finest = max(sizes, key=lambda i: sizes[i]) if sizes else None

    def _bind(self, sink: dict) -> dict:
        """Give every probe ``sink`` (a fresh dict per call: ``torch.export`` restores module attributes after
        tracing as copies, so a dict bound once would not stay shared)."""
        for module in self.net.modules():
            if isinstance(module, _UafsProbe):
                module.sink = sink
        return sink

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self._bind({}) if self.finest is not None else {}
        out = self.net(image)
        logits = out[0] if isinstance(out, (list, tuple)) else out
        probabilities = torch.softmax(logits.float(), dim=1)
        if self.finest is None:
            uncertainty = torch.zeros_like(probabilities[:, :1])
        else:
            finest = maps[self.finest].float()
            uncertainty = F.interpolate(finest, size=image.shape[2:], mode=_LINEAR[self.spatial_dims],
                                        align_corners=False).clamp(0.0, 1.0)
            self._bind({})
        return probabilities, uncertainty


@torch.no_grad()
def reference_outputs(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch model's probabilities and uncertainty on ``image``, the way :func:`dragsaw.inference.infer` makes
    them (recording UAFS blocks, the finest map resized); zeros for the uncertainty of a model without UAFS."""
    from .inference.forward import forward_with_uncertainty, record_uncertainty

    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was_training = model.training
    model.eval()
    has_uafs = record_uncertainty(model, True) > 0
    try:
        out = forward_with_uncertainty(model, image.to(weights))
    finally:
        record_uncertainty(model, False)
        model.train(was_training)
    logits, unc = (out[:, :-1], out[:, -1:].clamp(0, 1)) if has_uafs else (out, None)
    probabilities = torch.softmax(logits.float(), dim=1)
    return probabilities, torch.zeros_like(probabilities[:, :1]) if unc is None else unc.float()


# ------------------------------------------------------------------ checks
def check_export_dependencies(fmt: str) -> None:
    """Raise a :class:`ConfigError` naming the fix when ``fmt`` needs packages that are not installed."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not an export format; use one of {', '.join(FORMATS)}.")
    if fmt != "onnx":
        return
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          f"not installed; install the export extra: {_INSTALL}")


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file path for the exported model, e.g. "
                          f"{str(out / 'model.onnx')!r}.")
    existing = next((p for p in out.parents if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise ConfigError(f"cannot write --out {str(out)!r}: {str(existing)!r} is a file, not a folder; choose "
                          "another --out.")
    if not os.access(existing, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"cannot write --out {str(out)!r}: no write permission in {str(existing)!r}; choose a "
                          "writable --out or fix the folder's permissions.")


def _checkpoint(run: Path, which: str) -> Path:
    """The checkpoint file of ``run`` (a run folder or a .ckpt file) for ``--checkpoint which``."""
    if which not in ("best", "last"):
        raise ConfigError(f"--checkpoint {which!r} must be best or last.")
    if not run.exists():
        raise ConfigError(f"run {str(run)!r} does not exist; pass the folder a `dragsaw train` wrote, or a .ckpt "
                          "file.")
    if run.is_file():
        return run
    ckpt = run / "checkpoints" / f"{which}.ckpt"
    if ckpt.is_file():
        return ckpt
    if which == "best" and (run / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(f"run {str(run)!r} has no checkpoints/best.ckpt (only last.ckpt: it stopped before its "
                          "first validation); export it with --checkpoint last, or train it to completion first.")
    raise ConfigError(f"run {str(run)!r} has no checkpoint (checkpoints/{which}.ckpt is missing); train it first "
                      "(`dragsaw train ... --out RUN`, or `dragsaw train --resume RUN`) or pass a .ckpt file.")


# ------------------------------------------------------------------ exporting
def _size_multiple(host: nn.Module, input_size: list[int]) -> list[int]:
    """The total stride per axis (the spatial sizes the network takes are its multiples), else the input size."""
    multiple = getattr(host, "size_multiple", None)
    if multiple is not None:
        return [int(v) for v in (multiple if isinstance(multiple, (list, tuple)) else [multiple] * len(input_size))]
    channels = getattr(host, "channels", None)
    if type(host).__name__ == "UNet" and channels:
        return [2 ** (len(channels) - 1)] * len(input_size)
    return list(input_size)


def _export_program(wrapper: nn.Module, example: torch.Tensor, second: torch.Tensor):
    """``torch.export`` of ``wrapper`` with a dynamic batch and, where the network allows it, dynamic spatial axes.

    Returns ``(program, spatial)``. Spatial axes are first left to ``torch.export`` (``Dim.AUTO``); a network that
    fixes them (e.g. a host that pads with Python ints) leaves guards that fail on ``second`` (another valid size),
    and is exported again with its spatial size fixed, so that no exported file carries a size it cannot run.
    """
    import warnings

    from torch.export import Dim

    spatial_axes = range(2, example.ndim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "tensor attributes ... were assigned during export"
        return _export_program_quietly(wrapper, example, second, spatial_axes, Dim)


def _export_program_quietly(wrapper, example, second, spatial_axes, Dim):
    program = torch.export.export(wrapper, (example,), strict=False,
                                  dynamic_shapes={"image": {0: Dim.AUTO, **{i: Dim.AUTO for i in spatial_axes}}})
    try:
        with torch.no_grad():
            program.module()(second)
        return program, True
    except Exception:  # a guard on the spatial size (or a shape error): the network needs its export size
        pass
    program = torch.export.export(wrapper, (example,), strict=False,
                                  dynamic_shapes={"image": {0: Dim.AUTO, **{i: Dim.STATIC for i in spatial_axes}}})
    return program, False


def _make(fmt: str, wrapper: ExportWrapper, example: torch.Tensor, second: torch.Tensor, tmp: Path,
          opset: int | None) -> dict:
    """Write ``wrapper`` in ``fmt`` to ``tmp``; return what is known of its dynamic axes."""
    import warnings

    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of the hosts' shape checks
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            torch.jit.save(traced, str(tmp))
        return {"batch": None, "spatial": None}  # found by the verification
    program, spatial = _export_program(wrapper, example, second)
    if fmt == "exported-program":
        torch.export.save(program, str(tmp))
    else:
        import logging

        registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not
        level = registration.level  # installed. Skipping torchvision::nms" and the like: not needed here
        registration.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset,
                                             input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                             external_data=False, verbose=False)
        registration.setLevel(level)
        onnx_program.save(str(tmp), external_data=False)
    return {"batch": True, "spatial": spatial}


def _runner(fmt: str, path: Path) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], str]:
    """A function running the exported file, and the name of what runs it."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(x):
            probs, unc = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
            return torch.from_numpy(probs), torch.from_numpy(unc)

        return run, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu")

        def run(x):
            with torch.no_grad():
                return module(x)

        return run, f"torch.jit.load (torch {torch.__version__})"
    program = torch.export.load(str(path)).module()

    def run(x):
        with torch.no_grad():
            return program(x)

    return run, f"torch.export.load (torch {torch.__version__})"


def _compare(run, model: nn.Module, shape: tuple[int, ...], seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    ref_p, ref_u = reference_outputs(model, x)
    got_p, got_u = run(x)
    if tuple(got_p.shape) != tuple(ref_p.shape) or tuple(got_u.shape) != tuple(ref_u.shape):
        raise ValueError(f"output shapes {tuple(got_p.shape)}, {tuple(got_u.shape)} instead of "
                         f"{tuple(ref_p.shape)}, {tuple(ref_u.shape)}")
    return {"input_shape": list(shape),
            "max_abs_diff_probabilities": float((got_p.float() - ref_p).abs().max()),
            "max_abs_diff_uncertainty": float((got_u.float() - ref_u).abs().max())}


def _within(case: dict) -> bool:
    return all(math.isfinite(case[f"max_abs_diff_{k}"]) and case[f"max_abs_diff_{k}"] <= TOLERANCE[k]
               for k in TOLERANCE)


def export_run(run: str | Path, fmt: str, out: str | Path, *, checkpoint: str = "best", opset: int | None = None,
               seed: int = 0, log: Callable[[str], None] | None = print) -> dict:
    """Export the model of ``run`` to ``out`` in ``fmt`` and write ``out.json`` beside it; return that record.

    Args:
        run: a run folder (its ``checkpoints/<checkpoint>.ckpt``) or a checkpoint file.
        fmt: one of :data:`FORMATS`.
        out: the model file to write (``out.json`` is written beside it).
        checkpoint: ``"best"`` or ``"last"``.
        opset: ONNX opset (None: the exporter's default).
        seed: seed of the verification inputs.
        log: where the verification lines go (None: nowhere).

    Raises:
        ConfigError: unknown format, missing packages (``pip install "dragsaw[export]"``), unwritable ``out``, a run
            without that checkpoint.
        ExportError: the network cannot be exported in ``fmt``, or the exported model differs from the PyTorch
            model by more than :data:`TOLERANCE`; nothing is written then.
    """
    from . import __version__
    from .engine.run import load_task

    say = log or (lambda text: None)
    check_export_dependencies(fmt)
    if opset is not None and (fmt != "onnx" or isinstance(opset, bool) or not isinstance(opset, int) or opset < 18):
        raise ConfigError(f"--opset {opset!r}: " + ("only --format onnx has an opset; leave --opset out." if fmt != "onnx"
                                                    else "give a whole number >= 18 (the exporter's oldest), e.g. 18."))
    out = Path(out)
    if fmt == "exported-program" and out.suffix != ".pt2":
        raise ConfigError(f"--out {str(out)!r}: torch.export.load reads only files ending in .pt2; use e.g. "
                          f"--out {str(out.with_suffix('.pt2'))!r} with --format exported-program.")
    _check_out(out)
    ckpt = _checkpoint(Path(run), checkpoint)
    task, ckpt = load_task(ckpt)
    plan, config = task.plan, task.config
    in_channels = plan.in_channels or task.hparams.get("in_channels")
    size = [int(v) for v in plan.input_size]
    model = task.model.eval()
    wrapper = ExportWrapper(model, plan.spatial_dims, (1, in_channels, *size)).eval()
    # batch 2: torch.export keeps an axis whose example size is 1 fixed (its 0/1 specialisation)
    example = torch.randn((2, in_channels, *size), generator=torch.Generator().manual_seed(seed))
    multiple = _size_multiple(model, size)
    second = [s + m for s, m in zip(size, multiple)]

    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp.pt2" if fmt == "exported-program" else ".tmp"  # torch.export.load reads only *.pt2 files
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        started = time.perf_counter()
        try:
            dynamic = _make(fmt, wrapper, example, torch.zeros(1, in_channels, *second), tmp, opset)
        except Exception as exc:
            raise ExportError(f"the {type(model).__name__} network of {ckpt} cannot be exported as {fmt} "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})",
                              fix="try another --format (torchscript traces any network at its input size), or "
                                  "rerun with --debug and report it") from exc
        seconds = time.perf_counter() - started
        try:
            runner, runtime = _runner(fmt, tmp)
        except Exception as exc:
            raise ExportError(f"the exported {fmt} file cannot be loaded back ({type(exc).__name__}: "
                              f"{str(exc)[:300]})", fix="rerun with --debug and report it") from exc
        cases, failed = [], []
        plan_cases = [("export size, batch 3", (3, in_channels, *size), True)]
        if dynamic["spatial"] is not False:  # claimed (or, for TorchScript, unknown): check a second size
            plan_cases.append(("second size", (1, in_channels, *second), dynamic["spatial"] is True))
        for label, shape, required in plan_cases:
            try:
                case = _compare(runner, model, shape, seed)
            except Exception as exc:
                if required:
                    raise ExportError(f"the exported {fmt} model fails on an input {list(shape)} "
                                      f"({type(exc).__name__}: {str(exc)[:300]})",
                                      fix="rerun with --debug and report it") from exc
                dynamic["spatial"] = False
                continue
            if not _within(case) and not required:  # a traced graph that does not generalise: fixed size
                dynamic["spatial"] = False
                continue
            case["label"] = label
            cases.append(case)
            say(f"verify {fmt} {label} {list(shape)}: max |diff| probabilities "
                f"{case['max_abs_diff_probabilities']:.3g}, uncertainty {case['max_abs_diff_uncertainty']:.3g} "
                f"(tolerance {TOLERANCE['probabilities']:g})")
            if not _within(case):
                failed.append(case)
        if dynamic["spatial"] is None:
            dynamic["spatial"] = True
        if dynamic["batch"] is None:
            dynamic["batch"] = True  # verified with batch 3 after tracing with batch 2
        if failed:
            worst = failed[0]
            raise ExportError(
                f"the exported {fmt} model differs from the PyTorch model on input {worst['input_shape']}: max "
                f"|diff| probabilities {worst['max_abs_diff_probabilities']:.3g}, uncertainty "
                f"{worst['max_abs_diff_uncertainty']:.3g}, over the tolerance {TOLERANCE['probabilities']:g}; "
                f"nothing was written to {out}",
                fix="try another --format or --opset, or rerun with --debug and report it")
        spatial_names = list(AXIS_NAMES[plan.spatial_dims])
        s_shape = spatial_names if dynamic["spatial"] else size
        b = "batch" if dynamic["batch"] else 1
        num_classes = int(plan.num_classes)
        record = {
            "format": fmt,
            "file": out.name,
            "dragsaw_version": __version__,
            "torch_version": torch.__version__,
            "checkpoint": str(ckpt.resolve()),
            "model": {"name": config.model.name, "uafs": wrapper.uafs_blocks > 0, "uafs_blocks": wrapper.uafs_blocks},
            "preprocessing": {
                "spatial_dims": plan.spatial_dims,
                "input_size": size,
                "in_channels": in_channels,
                "normalization": plan.normalization,
                "mean": plan.mean,
                "std": plan.std,
                "target_spacing": plan.target_spacing,
                "modalities": plan.modalities,
                "ct_stats": plan.ct_stats,
                "num_classes": num_classes,
                "class_names": list(config.data.class_names) if config.data.class_names else None,
            },
            "input": {"name": INPUT_NAME, "shape": [b, in_channels, *s_shape], "dtype": "float32",
                      "layout": "channels first, preprocessed as 'preprocessing' says"},
            "outputs": [
                {"name": OUTPUT_NAMES[0], "shape": [b, num_classes, *s_shape], "dtype": "float32",
                 "meaning": "softmax over the classes of the main logits"},
                {"name": OUTPUT_NAMES[1], "shape": [b, 1, *s_shape], "dtype": "float32",
                 "meaning": ("finest UAFS map (normalised entropy in [0, 1]) resized to the input size"
                             if wrapper.uafs_blocks else "zeros: this model has no UAFS block")},
            ],
            "dynamic": {"batch": bool(dynamic["batch"]), "spatial": bool(dynamic["spatial"]),
                        "size_multiple": multiple},
            "opset": opset if fmt == "onnx" else None,
            "export_seconds": round(seconds, 3),
            "verification": {"runtime": runtime, "seed": seed, "tolerance": dict(TOLERANCE), "cases": cases,
                             "passed": True},
        }
        if fmt == "onnx" and opset is None:
            import onnx

            record["opset"] = next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                                    if o.domain in ("", "ai.onnx")), None)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
        record["file_bytes"] = out.stat().st_size
        try:
            write_json_atomic(record, out.with_name(out.name + ".json"))
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # folders this call made for --out, when they stayed empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    finally:
        tmp.unlink(missing_ok=True)
    say(f"wrote {out} ({record['file_bytes'] / 1e6:.2f} MB, {fmt}, exported in {seconds:.1f} s) and {out}.json")
    return record


def _umask() -> int:
    from ._atomic import current_umask

    return current_umask()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `dragsaw export`")
