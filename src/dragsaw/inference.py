"""Inference: native-resolution predictions, class probabilities and UAFS uncertainty maps; evaluation loops."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data import Case, SegmentationDataset, collate_eval, read_image
from .errors import DragsawError
from .metrics import case_metrics, resize_logits_to
from .report import save_overlay_png
from .uafs import UncertaintySelect, uncertainty_maps

__all__ = ["record_uncertainty", "finest_uncertainty", "evaluate_loader", "predict_files", "save_png_atomic"]


def record_uncertainty(model: nn.Module, on: bool = True) -> int:
    """Switch recording of the last uncertainty map on every UAFS block of ``model``; returns how many."""
    blocks = [m for m in model.modules() if isinstance(m, UncertaintySelect)]
    for block in blocks:
        block.record = on
        if not on:
            block.last_uncertainty = None
    return len(blocks)


def finest_uncertainty(model: nn.Module, size: Sequence[int]) -> torch.Tensor | None:
    """The recorded UAFS map of the finest resolution, resized to ``size``.

    Shape:
        returns ``[B, 1, *size]`` in [0, 1], or ``None`` when the model has no recording UAFS block.
    """
    maps = uncertainty_maps(model)
    if not maps:
        return None
    finest = max(maps.values(), key=lambda m: m[0, 0].numel())
    mode = "bilinear" if finest.ndim == 4 else "trilinear"
    return F.interpolate(finest.float(), size=tuple(size), mode=mode, align_corners=False).clamp(0, 1)


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader,
    num_classes: int,
    *,
    device: torch.device | str = "cpu",
    include_hd95: bool = True,
    overlays: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Per-case metrics at native resolution over an evaluation loader (``collate_eval`` batches).

    Returns:
        ``(per_case, overlay_items)``: one metrics dict per case (with ``case_id``), and up to ``overlays`` items
        for :func:`dragsaw.report.plot_overlays` (image at native size, label, prediction, uncertainty).
    """
    was_training = model.training
    model.eval()
    record_uncertainty(model, True)
    cases = {c.case_id: c for c in loader.dataset.cases}
    per_case, items = [], []
    try:
        for batch in loader:
            logits = model(batch["image"].to(device))
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            for i, native in enumerate(batch["label_native"]):
                size = tuple(native.shape)
                pred = resize_logits_to(logits[i : i + 1].float(), size).argmax(1)[0].cpu()
                scores = case_metrics(pred, native, num_classes, include_hd95=include_hd95)
                per_case.append({"case_id": batch["case_id"][i], **scores})
                if len(items) < overlays:
                    unc = finest_uncertainty(model, size)
                    items.append({
                        "image": read_image(cases[batch["case_id"][i]].image),
                        "label": native.numpy(), "pred": pred.numpy(), "case_id": batch["case_id"][i],
                        **({"uncertainty": unc[i, 0].cpu().numpy()} if unc is not None else {}),
                    })
    finally:
        record_uncertainty(model, False)
        model.train(was_training)
    return per_case, items


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a uint8/uint16 array as PNG through a temporary file and ``os.replace`` (never a partial file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_prediction(out_dir: Path, stem: str, image: np.ndarray, probs: torch.Tensor, unc, num_classes: int):
    pred = probs.argmax(0).numpy().astype(np.uint8)
    written = [save_png_atomic(pred * 255 if num_classes == 2 else pred, out_dir / f"{stem}_mask.png")]
    if num_classes == 2:
        prob = (probs[1].numpy() * 255).round().astype(np.uint8)
        written.append(save_png_atomic(prob, out_dir / f"{stem}_prob.png"))
    else:
        target = out_dir / f"{stem}_probs.npy"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, probs.numpy().astype(np.float16))
        os.replace(tmp, target)
        written.append(target)
    if unc is not None:
        written.append(save_png_atomic((unc.numpy() * 255).round().astype(np.uint8), out_dir / f"{stem}_uncertainty.png"))
    written.append(save_overlay_png(image, pred, out_dir / f"{stem}_overlay.png", uncertainty=None if unc is None else unc.numpy()))
    return written


@torch.no_grad()
def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    num_classes: int,
    input_size: Sequence[int],
    mean=None,
    std=None,
    device: torch.device | str = "cpu",
) -> tuple[list[Path], dict[str, str]]:
    """Predict every input image and write, per image ``<stem>``: ``_mask.png`` (native size; {0,255} for binary,
    class indices otherwise), ``_prob.png`` (foreground probability; ``_probs.npy`` [K,H,W] for multi-class),
    ``_uncertainty.png`` (UAFS map, when the model has UAFS) and ``_overlay.png``.

    Bad inputs do not stop the others: they are returned as ``{path: reason}`` and nothing is written for them.

    Returns:
        ``(written_files, failures)``.
    """
    out_dir = Path(out_dir)
    was_training = model.training
    model.eval()
    record_uncertainty(model, True)
    written: list[Path] = []
    failures: dict[str, str] = {}
    try:
        for path in inputs:
            path = Path(path)
            try:
                dataset = SegmentationDataset([Case(path.stem, path, None)], num_classes=num_classes,
                                              input_size=input_size, train=False, cache=False, mean=mean, std=std)
                batch = collate_eval([dataset[0]])
                size = batch["image_native_size"][0]
                logits = model(batch["image"].to(device))
                logits = logits[0] if isinstance(logits, (list, tuple)) else logits
                probs = torch.softmax(resize_logits_to(logits.float(), size), 1)[0].cpu()
                unc = finest_uncertainty(model, size)
                unc = None if unc is None else unc[0, 0].cpu()
                image = read_image(path)
            except (DragsawError, OSError, ValueError) as exc:
                failures[str(path)] = str(exc)
                continue
            try:
                written += _write_prediction(out_dir, path.stem, image, probs, unc, num_classes)
            except Exception:
                for partial in out_dir.glob(f"{path.stem}_*"):
                    partial.unlink(missing_ok=True)  # no partial set of outputs for this input
                raise
    finally:
        record_uncertainty(model, False)
        model.train(was_training)
    return written, failures
