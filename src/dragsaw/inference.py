"""Inference: native-resolution predictions, class probabilities and UAFS uncertainty maps; evaluation loops."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from PIL import Image
from torch import nn

from ._atomic import atomic_file
from .data import (Case, SegmentationDataset, collate_eval, image_channels, preprocess_transforms, read_image,
                   to_original_geometry, write_nifti)
from .errors import DataError, DragsawError
from .metrics import case_metrics, error_auroc, resize_logits_to, softmax_entropy
from .report import save_overlay_png
from .uafs import UncertaintySelect, uncertainty_maps

__all__ = [
    "InferenceSettings", "infer", "record_uncertainty", "finest_uncertainty", "evaluate_loader", "predict_files",
    "save_png_atomic",
]


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a whole image or volume.

    2D images go through the network at once; volumes (``spatial_dims=3``) through MONAI's sliding-window
    inference with Gaussian blending (``roi_size`` windows, ``overlap``, ``sw_batch_size`` windows per forward),
    optionally averaged over flips of every spatial axis (``mirror``).
    """

    spatial_dims: int = 2
    roi_size: tuple[int, ...] = ()
    overlap: float = 0.5
    sw_batch_size: int = 2
    mirror: bool = False

    @classmethod
    def from_config(cls, config) -> InferenceSettings:
        tc = config.train
        return cls(config.model.spatial_dims, tuple(config.data.input_size), tc.sw_overlap, tc.sw_batch_size, tc.mirror)


def _forward_with_uncertainty(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, K, *S]`` with the finest UAFS map appended as channel ``K`` when the model records one."""
    logits = model(x)
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    unc = finest_uncertainty(model, x.shape[2:])
    return logits.float() if unc is None else torch.cat([logits.float(), unc], dim=1)


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (for models with UAFS) the uncertainty map of whole images or volumes.

    Shape:
        ``images`` ``[B, C, *S]`` -> logits ``[B, K, *S]`` and uncertainty ``[B, 1, *S]`` (or ``None``).
    """
    has_uafs = record_uncertainty(model, True) > 0
    try:
        if settings.spatial_dims == 3:
            def predictor(x):
                return _forward_with_uncertainty(model, x)

            flips = [()] + ([(a,) for a in range(2, images.ndim)] if settings.mirror else [])
            total = None
            for axes in flips:
                x = images.flip(axes) if axes else images
                out = sliding_window_inference(x, settings.roi_size, settings.sw_batch_size, predictor,
                                               overlap=settings.overlap, mode="gaussian")
                out = out.flip(axes) if axes else out
                total = out if total is None else total + out
            out = total / len(flips)
        else:
            out = _forward_with_uncertainty(model, images)
    finally:
        record_uncertainty(model, False)
    if has_uafs:
        return out[:, :-1], out[:, -1:].clamp(0, 1)
    return out, None


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


def _middle_slice(volume: np.ndarray, label: np.ndarray) -> int:
    """Index along the last axis through the most foreground (the middle when there is none)."""
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.any() else label.shape[-1] // 2


def _overlay_item_3d(batch: dict, pred: torch.Tensor, unc: torch.Tensor | None, case_id: str) -> dict:
    """A 2D overlay item from a volume in the preprocessed space: the slice with the most foreground."""
    image = batch["image"][0, 0].numpy()
    label = batch["label"][0].numpy()
    k = _middle_slice(image, label)
    lo, hi = np.percentile(image[..., k], [1, 99])
    item = {"image": np.clip((image[..., k] - lo) / max(hi - lo, 1e-6), 0, 1)[None], "label": label[..., k],
            "pred": pred.numpy()[..., k], "case_id": f"{case_id} (slice {k})"}
    if unc is not None:
        item["uncertainty"] = unc.numpy()[..., k]
    return item


def _region_scores(pred: np.ndarray, target: np.ndarray, regions: dict, spacing, hd95: bool) -> dict:
    """Binary metrics of unions of classes (e.g. BraTS whole tumour = {1, 2, 3}), keys ``dice/<region>``."""
    out = {}
    for name, classes in regions.items():
        scores = case_metrics(np.isin(pred, classes).astype(np.int64), np.isin(target, classes).astype(np.int64), 2,
                              spacing=spacing, include_hd95=hd95)
        out[f"dice/{name}"] = scores["dice_fg"]
        out[f"jaccard/{name}"] = scores["jaccard_fg"]
        if hd95:
            out[f"hd95/{name}"] = scores["hd95_fg"]
    return out


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader,
    num_classes: int,
    *,
    settings: InferenceSettings | None = None,
    device: torch.device | str = "cpu",
    include_hd95: bool = True,
    overlays: int = 0,
    regions: dict[str, list[int]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Per-case metrics at the native resolution / original geometry over an evaluation loader.

    2D batches (``collate_eval``): logits resized to each native mask size before the arg-max. 3D batches
    (``collate_eval3d``): sliding-window prediction mapped back to the input's grid (same shape and affine),
    HD95 in millimetres. ``regions`` adds metrics of unions of classes.

    Every case also gets two error-detection scores (:func:`dragsaw.metrics.error_auroc`, at the native
    resolution / original geometry): ``auroc_uafs``, the AUROC of the finest UAFS uncertainty map for the
    case's wrongly classified pixels (NaN for models without UAFS), and ``auroc_entropy``, that of the
    normalised softmax entropy of the final logits (the reference any model has). Both are NaN for a case with
    no wrong or no right pixel.

    Returns:
        ``(per_case, overlay_items)``: one metrics dict per case (with ``case_id``), and up to ``overlays`` items
        for :func:`dragsaw.report.plot_overlays`.
    """
    settings = settings or InferenceSettings()
    was_training = model.training
    model.eval()
    per_case, items = [], []
    try:
        for batch in loader:
            logits, unc = infer(model, batch["image"].to(device), settings)
            for i, native in enumerate(batch["label_native"]):
                case_id = batch["case_id"][i]
                if settings.spatial_dims == 3:
                    meta = batch["meta"][i]
                    pred_pre = logits[i].argmax(0).cpu()
                    pred = torch.from_numpy(np.asarray(to_original_geometry(pred_pre.numpy(), meta))).long()
                    spacing = [float(v) for v in np.sqrt((np.asarray(meta["affine"])[:3, :3] ** 2).sum(0))]
                    maps = [softmax_entropy(logits[i : i + 1].float())[0, 0]] + ([] if unc is None else [unc[i, 0]])
                    mapped = to_original_geometry(torch.stack(maps).float().cpu(), meta)  # one resampling for both
                    entropy, u_native = mapped[0], (None if unc is None else mapped[1])
                else:
                    resized = resize_logits_to(logits[i : i + 1].float(), tuple(native.shape))
                    pred = resized.argmax(1)[0].cpu()
                    spacing = None
                    entropy = softmax_entropy(resized)[0, 0].cpu()
                    u_native = None
                    if unc is not None:
                        u_native = resize_logits_to(unc[i : i + 1].float(), tuple(native.shape))[0, 0].clamp(0, 1).cpu()
                scores = case_metrics(pred, native, num_classes, spacing=spacing, include_hd95=include_hd95)
                # error detection: how well each uncertainty map ranks the wrong pixels above the right ones
                scores["auroc_uafs"] = math.nan if u_native is None else error_auroc(u_native, pred, native)
                scores["auroc_entropy"] = error_auroc(entropy, pred, native)
                if regions:
                    scores |= _region_scores(pred.numpy(), native.numpy(), regions, spacing, include_hd95)
                per_case.append({"case_id": case_id, **scores})
                if len(items) < overlays:
                    if settings.spatial_dims == 3:
                        items.append(_overlay_item_3d(batch, pred_pre, None if unc is None else unc[i, 0].cpu(), case_id))
                    else:
                        size = tuple(native.shape)
                        u = None if unc is None else resize_logits_to(unc[i : i + 1], size)[0, 0].clamp(0, 1)
                        cases = {c.case_id: c for c in loader.dataset.cases}
                        items.append({"image": read_image(cases[case_id].image), "label": native.numpy(),
                                      "pred": pred.numpy(), "case_id": case_id,
                                      **({"uncertainty": u.cpu().numpy()} if u is not None else {})})
    finally:
        model.train(was_training)
    return per_case, items


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a uint8/uint16 array as PNG through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def _write_prediction(out_dir: Path, stem: str, image: np.ndarray, probs: torch.Tensor, unc, num_classes: int):
    pred = probs.argmax(0).numpy().astype(np.uint8)
    written = [save_png_atomic(pred * 255 if num_classes == 2 else pred, out_dir / f"{stem}_mask.png")]
    if num_classes == 2:
        prob = (probs[1].numpy() * 255).round().astype(np.uint8)
        written.append(save_png_atomic(prob, out_dir / f"{stem}_prob.png"))
    else:
        target = out_dir / f"{stem}_probs.npy"
        with atomic_file(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, probs.numpy().astype(np.float16))
        written.append(target)
    if unc is not None:
        written.append(save_png_atomic((unc.numpy() * 255).round().astype(np.uint8), out_dir / f"{stem}_uncertainty.png"))
    written.append(save_overlay_png(image, pred, out_dir / f"{stem}_overlay.png", uncertainty=None if unc is None else unc.numpy()))
    return written


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _predict_image(model, path: Path, out_dir: Path, config, settings: InferenceSettings, device) -> list[Path]:
    dc = config.data
    dataset = SegmentationDataset([Case(path.stem, path, None)], num_classes=dc.num_classes,
                                  input_size=dc.input_size, train=False, cache=False, mean=dc.mean, std=dc.std)
    batch = collate_eval([dataset[0]])
    size = batch["image_native_size"][0]
    logits, unc = infer(model, batch["image"].to(device), settings)
    probs = torch.softmax(resize_logits_to(logits.float(), size), 1)[0].cpu()
    unc = None if unc is None else resize_logits_to(unc, size)[0, 0].clamp(0, 1).cpu()
    image = read_image(path)
    return _write_prediction(out_dir, path.stem, image, probs, unc, dc.num_classes)


def _predict_volume(model, path: Path, out_dir: Path, config, settings: InferenceSettings, device,
                    probabilities: bool) -> list[Path]:
    dc = config.data
    pipeline = preprocess_transforms(dc.target_spacing, dc.modalities or ["MRI"], dc.ct_stats,
                                     num_classes=dc.num_classes)
    item = pipeline({"image": str(path)})
    logits, unc = infer(model, item["image"][None].to(device), settings)
    meta = item["meta"]
    stem = _stem(path)
    pred = to_original_geometry(logits[0].argmax(0).cpu().numpy(), meta)
    written = [write_nifti(np.asarray(pred), meta["affine"], out_dir / f"{stem}_seg.nii.gz")]
    if probabilities:
        probs = to_original_geometry(torch.softmax(logits[0].float(), 0).cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(probs, dtype=np.float32), meta["affine"], out_dir / f"{stem}_probs.nii.gz"))
    if unc is not None:
        u = to_original_geometry(unc[0, 0].float().cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(u, dtype=np.float32), meta["affine"], out_dir / f"{stem}_uncertainty.nii.gz"))
    return written


def _check_input(path: Path, volume: bool, in_channels: int | None) -> None:
    """Raise a :class:`DataError` naming ``path`` when it is missing, empty, not a readable NIfTI header (volumes)
    or, with ``in_channels``, holds another channel count than the model takes."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; fix: check the path")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); fix: copy or export it again")
    if volume:
        import nibabel as nib

        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise DataError(f"{path} is not a readable NIfTI volume ({type(exc).__name__}: {exc}); fix: check that "
                            "it is a complete .nii/.nii.gz file") from exc
        channels = shape[3] if len(shape) == 4 else 1
        kind = "volumes (modalities on the 4th axis)"
    else:
        channels = image_channels(path)  # DataError for files that are not images
        kind = "images"
    if in_channels is not None and channels != in_channels:
        raise DataError(
            f"{path} has {channels} channel(s) but this run's model takes {in_channels}-channel {kind}; fix: convert "
            f"it to {in_channels} channel(s){'' if volume else {1: ' (grayscale)', 3: ' (RGB)'}.get(in_channels, '')} "
            "or use a run trained on such inputs"
        )


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    config,
    *,
    device: torch.device | str = "cpu",
    probabilities: bool = False,
    in_channels: int | None = None,
) -> tuple[list[Path], dict[str, str]]:
    """Predict every input with the run's configuration and write the outputs to ``out_dir``.

    2D images, per ``<stem>``: ``_mask.png`` (native size; {0,255} for binary, class indices otherwise),
    ``_prob.png`` (foreground probability; ``_probs.npy`` [K,H,W] for multi-class), ``_uncertainty.png`` (UAFS
    map, when the model has UAFS) and ``_overlay.png``. Volumes (``.nii``/``.nii.gz``): ``_seg.nii.gz`` in the
    input's geometry (same shape and affine), ``_uncertainty.nii.gz`` with UAFS, ``_probs.nii.gz`` (channels last)
    with ``probabilities``.

    Bad inputs do not stop the others: they are returned as ``{path: reason}`` and nothing is written for them
    (each input's outputs are made in a hidden folder inside ``out_dir`` and moved out only when all are complete).
    Two different inputs with the same stem (``a.png``, ``a.jpg``) would overwrite each other's outputs: the later
    one is reported as bad (the same file given twice is predicted once). With ``in_channels`` (the channels the
    model was trained on), an input with another channel count is reported before it reaches the network.

    Returns:
        ``(written_files, failures)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = InferenceSettings.from_config(config)
    was_training = model.training
    model.eval()
    written: list[Path] = []
    failures: dict[str, str] = {}
    stems: dict[str, Path] = {}
    try:
        for path in inputs:
            path = Path(path)
            volume = path.name.endswith((".nii", ".nii.gz"))
            stem = _stem(path)
            if volume != (settings.spatial_dims == 3):
                failures[str(path)] = (f"a {'volume' if volume else '2D image'} given to a "
                                       f"{settings.spatial_dims}D model; give {'NIfTI volumes' if settings.spatial_dims == 3 else 'image files'}")
                continue
            if stem in stems:
                if stems[stem].resolve() != path.resolve():
                    failures[str(path)] = (f"its outputs ({stem}_*) would overwrite those of {stems[stem]}; rename one "
                                           "of the two or predict them into separate --out folders")
                continue
            stems[stem] = path
            staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
            moved: list[Path] = []
            try:
                _check_input(path, volume, in_channels)
                if volume:
                    files = _predict_volume(model, path, staging, config, settings, device, probabilities)
                else:
                    files = _predict_image(model, path, staging, config, settings, device)
                for file in files:  # all outputs of this input are complete: move them out together
                    os.replace(file, out_dir / file.name)
                    moved.append(out_dir / file.name)
                written += moved
            except (DragsawError, OSError, ValueError, RuntimeError) as exc:
                for file in moved:
                    file.unlink(missing_ok=True)  # no partial set of outputs for this input
                failures[str(path)] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        model.train(was_training)
    return written, failures
