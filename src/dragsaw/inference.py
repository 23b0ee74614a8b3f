"""Inference: native-resolution predictions, class probabilities and UAFS uncertainty maps; evaluation loops."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ._atomic import atomic_file, write_json_atomic
from .data import (image_channels, read_image,
                   to_original_geometry, write_nifti)
from .data.io.files import require_file
from .data.io.formats import NIFTI, is_volume, match_volume_format, volume_stem
from .data.io.volumes import read_header
from .data.transforms.intensity import LINEAR_MODES
from .errors import ConfigError, DataError, DragsawError
from .metrics import case_metrics, error_auroc, resize_logits_in_blocks, softmax_entropy
from .plan import Plan
from .report import save_overlay_png
from .uafs import UncertaintySelect, uncertainty_maps

__all__ = [
    "InferenceSettings", "PRECISIONS", "resolve_device", "autocast_dtype", "infer", "record_uncertainty",
    "finest_uncertainty", "evaluate_loader", "predict_files",
    "save_png_atomic", "prediction_names", "native_prediction", "PREDICT_MANIFEST", "read_predict_manifest",
    "Ensemble", "infer_members", "mean_probabilities", "check_ensemble", "ENSEMBLE_PLAN_KEYS", "POSTPROCESS",
    "LARGEST_COMPONENT_CONNECTIVITY", "postprocess_prediction", "keep_largest_components",
]

PREDICT_MANIFEST = ".dragsaw-predict.json"
"""The file in a ``predict`` output folder that lists the files dragsaw wrote there (name -> sha256, size, input);
only these, unchanged, may be replaced by a later ``predict --overwrite``."""


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
"""Inference precisions (``--precision``): float32 throughout, or the network under ``torch.autocast`` in bfloat16 /
float16; the logits are cast to float32 before anything is computed from them (probabilities, metrics)."""

_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
"""The values :func:`resolve_device` (``--device``) takes."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(text: str | torch.device = "auto") -> torch.device:
    """The device that ``text`` (``--device``) names, checked against this machine.

    ``"auto"``: the current CUDA device when there is one, else Apple's MPS when available, else the CPU. ``"cpu"``,
    ``"cuda"`` (the current CUDA device), ``"cuda:N"`` and ``"mps"`` are taken when this machine has them; a
    :class:`torch.device` is checked the same way.

    Returns:
        a :class:`torch.device` (``cuda`` always with its index, e.g. ``cuda:0``).

    Raises:
        ConfigError: an unknown name (e.g. ``"tpu"``) or a device this machine lacks (e.g. ``"cuda:1"`` with one
            GPU: ``--device cuda:1 but this machine has 1 CUDA device(s) (cuda:0); use --device cpu or cuda:0``).
    """
    value = str(text).strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    kind, colon, index = value.partition(":")
    if kind == "cuda" and (not colon or index.isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"--device {value} but this machine has no CUDA device (torch.cuda.is_available() is False: no "
                f"NVIDIA GPU or driver, or a CPU-only PyTorch build, torch {torch.__version__}); use --device cpu "
                "(or --device auto, which takes the best device there is)"
            )
        number = int(index) if colon else torch.cuda.current_device()
        if number >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(f"--device {value} but this machine has {count} CUDA device(s) ({have}); use --device "
                              f"cpu or {'cuda:0' if count == 1 else 'one of ' + have}")
        return torch.device("cuda", number)
    if kind == "mps" and (not colon or index == "0"):
        if not _mps_available():
            raise ConfigError(f"--device {value} but Apple's MPS backend is not available on this machine (it needs an "
                              "Apple-silicon Mac and a PyTorch build with MPS); use --device cpu (or --device auto)")
        return torch.device("mps")
    raise ConfigError(f"--device {str(text)!r} is not a device dragsaw can use; use one of {DEVICE_CHOICES} (auto: "
                      "cuda if available, else mps, else cpu)")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype the network runs in under ``torch.autocast`` for ``precision`` on ``device``.

    ``"32-true"`` -> ``None`` (no autocast: float32), ``"bf16-mixed"`` -> ``torch.bfloat16``, ``"16-mixed"`` ->
    ``torch.float16``. Both mixed precisions work on CUDA (bfloat16 only where the GPU has it natively, Ampere and
    newer), on MPS and on the CPU (PyTorch's CPU autocast takes both; float16 there is correct but rarely faster).

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`, or ``device`` cannot run it (the message names
            both and the precision to use instead).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not an inference precision; use one of "
                          f"{', '.join(PRECISIONS)} (32-true: float32, the default)")
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if not native:
            raise ConfigError(f"--precision bf16-mixed but {device} ({torch.cuda.get_device_name(device)}) has no "
                              "native bfloat16 (it needs an Ampere or newer GPU); use --precision 16-mixed or 32-true")
    reason = None
    with warnings.catch_warnings(record=True) as caught:  # torch disables an unsupported autocast with a warning
        warnings.simplefilter("always")
        try:
            enabled = getattr(torch.autocast(device.type, dtype=dtype), "_enabled", True)
        except (RuntimeError, ValueError) as exc:
            enabled, reason = False, str(exc)
    if not enabled:
        reason = reason or "; ".join(str(w.message).replace("\n", " ") for w in caught) or "autocast is disabled"
        raise ConfigError(f"--precision {precision} is not supported on {device} by torch {torch.__version__} "
                          f"({reason}); use --precision 32-true" + (" or bf16-mixed" if dtype == torch.float16 else ""))
    return dtype


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is applied to a whole image or volume.

    2D images go through the network at once; volumes (``spatial_dims=3``) through MONAI's sliding-window
    inference with Gaussian blending (``roi_size`` windows, ``overlap``, ``sw_batch_size`` windows per forward).
    ``mirror`` (test-time augmentation, 2D and 3D): the logits and the uncertainty map are averaged over the input
    and its flips along each spatial axis, one axis at a time (1 + ``spatial_dims`` passes instead of 1).
    ``precision`` (one of :data:`PRECISIONS`): the network runs under ``torch.autocast`` for the mixed ones.

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`, or ``sw_batch_size`` < 1.
    """

    spatial_dims: int = 2
    roi_size: tuple[int, ...] = ()
    overlap: float = 0.5
    sw_batch_size: int = 2
    mirror: bool = False
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not an inference precision; use one of "
                              f"{', '.join(PRECISIONS)}")
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ConfigError(f"--sw-batch-size {self.sw_batch_size!r} (windows per forward of the sliding-window "
                              "inference) must be a whole number >= 1; use e.g. --sw-batch-size 2")

    @classmethod
    def from_config(cls, config, *, mirror: bool | None = None, sw_batch_size: int | None = None,
                    precision: str = "32-true", plan: Plan | None = None) -> InferenceSettings:
        """The settings of a run's configuration; ``mirror`` / ``sw_batch_size`` replace the run's ``train.mirror``
        / ``train.sw_batch_size`` unless None. The window size (``roi_size``) is the ``plan``'s input size, else
        ``data.input_size``."""
        tc = config.train
        size = plan.input_size if plan is not None else config.data.input_size
        return cls(config.model.spatial_dims, tuple(int(v) for v in size), tc.sw_overlap,
                   tc.sw_batch_size if sw_batch_size is None else sw_batch_size,
                   tc.mirror if mirror is None else bool(mirror), precision)


def _forward_with_uncertainty(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits ``[B, K, *S]`` with the finest UAFS map appended as channel ``K`` when the model records one; the
    network runs under ``torch.autocast(dtype)`` unless ``dtype`` is None, the result is float32."""
    with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        logits = model(x)
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    unc = finest_uncertainty(model, x.shape[2:])
    return logits.float() if unc is None else torch.cat([logits.float(), unc], dim=1)


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, settings: InferenceSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (for models with UAFS) the uncertainty map of whole images or volumes, in float32.

    2D images go through the network at once, volumes window by window (see :class:`InferenceSettings`). With
    ``settings.mirror`` both outputs are averaged over the input and its flips along each spatial axis (3 passes
    for images, 4 for volumes); with a mixed ``settings.precision`` the network runs under ``torch.autocast`` on
    ``images.device``. ``model`` must be on ``images.device``.

    Shape:
        ``images`` ``[B, C, *S]`` -> logits ``[B, K, *S]`` and uncertainty ``[B, 1, *S]`` (or ``None``).

    Raises:
        ConfigError: ``settings.precision`` cannot run on ``images.device`` (see :func:`autocast_dtype`).
    """
    dtype = autocast_dtype(settings.precision, images.device)
    has_uafs = record_uncertainty(model, True) > 0
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if dtype is None and weights != images.dtype and images.is_floating_point():  # e.g. a run trained in 64-true
        images = images.to(weights)

    def predictor(x):
        return _forward_with_uncertainty(model, x, dtype)

    def whole(x):  # one forward when the input is the network's input size (2D: always), else windows
        if not settings.roi_size or tuple(x.shape[2:]) == tuple(settings.roi_size):
            return predictor(x)
        return sliding_window_inference(x, settings.roi_size, settings.sw_batch_size, predictor,
                                        overlap=settings.overlap, mode="gaussian")

    try:
        flips = [()] + ([(a,) for a in range(2, images.ndim)] if settings.mirror else [])
        total = None
        for axes in flips:
            out = whole(images.flip(axes) if axes else images)
            out = out.flip(axes) if axes else out
            total = out if total is None else total + out
        out = total / len(flips) if len(flips) > 1 else total
    finally:
        record_uncertainty(model, False)
    if has_uafs:
        return out[:, :-1], out[:, -1:].clamp(0, 1)
    return out, None


class Ensemble(nn.Module):
    """Several trained models applied as one (``predict`` / ``evaluate`` with ``--ensemble``).

    Each member is applied with :func:`infer` (so its TTA flips are averaged inside it, in logit space, as for a
    single run); then the members' softmax **probabilities** are averaged (never their logits), and so are their
    UAFS uncertainty maps (over the members that have UAFS). :func:`evaluate_loader` and :func:`predict_files` take an
    ``Ensemble`` wherever they take a model. The members must share the preprocessing (see :func:`check_ensemble`):
    every input is read once, with the first member's plan.

    Raises:
        ConfigError: no member.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean softmax probabilities of one plain forward each (no windows, no flips)."""
        outs = []
        for member in self.members:
            out = member(x)
            outs.append(out[0] if isinstance(out, (list, tuple)) else out)
        return mean_probabilities(outs)


@torch.no_grad()
def infer_members(model: nn.Module, images: torch.Tensor,
                  settings: InferenceSettings) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """:func:`infer` for a model or an :class:`Ensemble`: the logits of every member (a list of one for a plain
    model; each averaged over its TTA flips) and the uncertainty map averaged over the members that have UAFS
    (``None`` when none has). Combine the logits with :func:`mean_probabilities`."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    logits, maps = [], []
    for member in members:
        z, u = infer(member, images, settings)
        logits.append(z)
        if u is not None:
            maps.append(u)
    if not maps:
        return logits, None
    unc = maps[0]
    for u in maps[1:]:
        unc = unc + u
    return logits, (unc / len(maps) if len(maps) > 1 else unc)


def mean_probabilities(logits: Sequence[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """The mean over members of ``softmax(logits_i, dim)`` (float32). One member: its softmax; the same logits
    given n times give exactly their softmax too (``(p + p) / 2 == p`` in floating point)."""
    total = None
    for z in logits:
        p = torch.softmax(z.float(), dim)
        total = p if total is None else total + p
    return total / len(logits) if len(logits) > 1 else total


def _distinct(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``logits`` as a list, cut to its first element when every member's logits equal it bit for bit (the same run
    given twice): their mean probabilities are its own, so the one-model path (arg-max and entropy of the logits)
    gives exactly the single run's results."""
    logits = list(logits)
    return logits[:1] if all(torch.equal(z, logits[0]) for z in logits[1:]) else logits


def _probability_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Normalised entropy ``-sum_k p_k ln p_k / ln K`` in [0, 1] of probabilities ``[B, K, *S]`` -> ``[B, 1, *S]``
    (the ensemble's counterpart of :func:`dragsaw.metrics.softmax_entropy`)."""
    p = probs.float()
    h = -(p * p.clamp_min(1e-12).log()).sum(1, keepdim=True) / math.log(p.shape[1])
    return h.clamp(0, 1)


ENSEMBLE_PLAN_KEYS = ("spatial_dims", "num_classes", "in_channels", "input_size", "normalization", "mean", "std",
                      "target_spacing", "modalities", "ct_stats")
"""The plan keys the runs of an ensemble must agree on: what the network predicts and how its input is read (every
input is preprocessed once, with the first run's plan)."""


def check_ensemble(members: Sequence[tuple[str, Plan]]) -> None:
    """Refuse runs that cannot be averaged: each ``(name, plan)`` must agree with the first on every key of
    :data:`ENSEMBLE_PLAN_KEYS` (the folds or seeds of one experiment do; the network topology may differ).

    Raises:
        ConfigError: ``cannot ensemble A and B: their plans differ in KEY (A: VALUE, B: VALUE); ...``.
    """
    if not members:
        return
    first, plan = members[0]
    for name, other in members[1:]:
        for key in ENSEMBLE_PLAN_KEYS:
            mine, theirs = getattr(plan, key), getattr(other, key)
            if mine != theirs:
                raise ConfigError(
                    f"cannot ensemble {first} and {name}: their plans differ in {key} ({first}: {mine!r}, {name}: "
                    f"{theirs!r}); an ensemble averages runs with the same classes and preprocessing (e.g. the folds "
                    "or seeds of one experiment)"
                )


POSTPROCESS = ("none", "largest-component")
"""``--postprocess`` choices, applied to the arg-max in the file's own geometry: ``largest-component`` keeps, for
each foreground class independently, its largest connected component (:func:`keep_largest_components`)."""

LARGEST_COMPONENT_CONNECTIVITY = 1
"""Neighbourhood of ``largest-component``: 1 = pixels/voxels sharing a face (4-neighbourhood in 2D,
6-neighbourhood in 3D; MONAI's ``connectivity=1``, scipy's and nnU-Net's default structure). Parts that touch only
at an edge or a corner are separate components, so the smaller of them is removed."""


def keep_largest_components(pred, num_classes: int):
    """For each foreground class 1..K-1, keep its largest connected component (face connectivity) of the label map
    ``pred`` (``[H, W]`` or ``[X, Y, Z]``, a tensor or an array); removed pixels become background (0). Returns the
    same type, dtype and shape. MONAI's ``KeepLargestConnectedComponent(applied_labels=1..K-1, independent=True,
    connectivity=1)``."""
    from monai.transforms import KeepLargestConnectedComponent

    if num_classes < 2:
        return pred
    keep = KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), is_onehot=False,
                                         independent=True, connectivity=LARGEST_COMPONENT_CONNECTIVITY)
    is_tensor = isinstance(pred, torch.Tensor)
    labels = torch.as_tensor(np.asarray(pred) if not is_tensor else pred)
    out = keep(labels[None].clone())[0]
    out = torch.as_tensor(out).to(labels.dtype)  # a MetaTensor from MONAI: plain tensor of the input's dtype
    out = out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
    return out if is_tensor else out.numpy().astype(np.asarray(pred).dtype, copy=False)


def postprocess_prediction(pred, num_classes: int, postprocess: str = "none"):
    """``pred`` after ``postprocess`` (one of :data:`POSTPROCESS`).

    Raises:
        ConfigError: an unknown ``postprocess``.
    """
    if postprocess == "none" or postprocess is None:
        return pred
    if postprocess == "largest-component":
        return keep_largest_components(pred, num_classes)
    raise ConfigError(f"--postprocess {postprocess!r} is not a post-processing; use one of {', '.join(POSTPROCESS)}")


def _check_postprocess(postprocess: str | None) -> str:
    postprocess = postprocess or "none"
    if postprocess not in POSTPROCESS:
        raise ConfigError(f"--postprocess {postprocess!r} is not a post-processing; use one of "
                          f"{', '.join(POSTPROCESS)}")
    return postprocess


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
    mode = LINEAR_MODES[finest.ndim - 2]
    return F.interpolate(finest.float(), size=tuple(size), mode=mode, align_corners=False).clamp(0, 1)


def _middle_slice(volume: np.ndarray, label: np.ndarray) -> int:
    """Index along the last axis through the most foreground (the middle when there is none)."""
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.any() else label.shape[-1] // 2


def _overlay_item_3d(batch: dict, pred: torch.Tensor, unc: torch.Tensor | None, case_id: str, i: int = 0) -> dict:
    """A 2D overlay item from volume ``i`` of a batch, in the preprocessed space: the slice with the most
    foreground."""
    image = batch["image"][i, 0].numpy()
    label = batch["label"][i].numpy()
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
    progress: bool = False,
    description: str = "evaluate",
    postprocess: str = "none",
) -> tuple[list[dict], list[dict]]:
    """Per-case metrics at the native resolution / original geometry over an evaluation loader.

    Batches come from :func:`dragsaw.data.collate_eval`. Images: logits resized to each native mask size before the
    arg-max. Volumes: sliding-window prediction mapped back to the input's grid (same shape and affine), HD95 in
    millimetres. ``regions`` adds metrics of unions of classes.

    Every case also gets two error-detection scores (:func:`dragsaw.metrics.error_auroc`, at the native
    resolution / original geometry): ``auroc_uafs``, the AUROC of the finest UAFS uncertainty map for the
    case's wrongly classified pixels (NaN for models without UAFS), and ``auroc_entropy``, that of the
    normalised softmax entropy of the final logits (the reference any model has). Both are NaN for a case with
    no wrong or no right pixel.

    The network runs on ``device`` (``model`` must be there) with ``settings`` (test-time mirroring, precision,
    sliding-window batch); ``progress`` shows a bar of the cases done on stderr, labelled ``description``.
    ``model`` may be an :class:`Ensemble` (mean softmax probabilities and mean UAFS maps of its members; the entropy
    is that of the mean probabilities). ``postprocess`` (one of :data:`POSTPROCESS`) is applied to each native
    arg-max before it is scored (the uncertainty scores use the arg-max before post-processing).

    Returns:
        ``(per_case, overlay_items)``: one metrics dict per case (with ``case_id``), and up to ``overlays`` items
        for :func:`dragsaw.report.plot_overlays`.
    """
    settings = settings or InferenceSettings()
    postprocess = _check_postprocess(postprocess)
    outputs = _outputs(settings.spatial_dims)
    was_training = model.training
    model.eval()
    per_case, items = [], []
    try:
        total = len(loader.dataset)
    except (AttributeError, TypeError):
        total = None
    bar = tqdm(total=total, desc=description, unit="case", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            members, unc = infer_members(model, batch["image"].to(device), settings)
            for i, native in enumerate(batch["label_native"]):
                case_id, meta = batch["case_id"][i], batch["meta"][i]
                unc_i = None if unc is None else unc[i : i + 1]
                raw, entropy, u_native = outputs.native_maps([z[i : i + 1] for z in members], unc_i, meta)
                pred = postprocess_prediction(raw, num_classes, postprocess)
                spacing = outputs.spacing(meta)
                scores = case_metrics(pred, native, num_classes, spacing=spacing, include_hd95=include_hd95)
                # error detection: how well each uncertainty map ranks the wrong pixels above the right ones
                scores["auroc_uafs"] = math.nan if u_native is None else error_auroc(u_native, raw, native)
                scores["auroc_entropy"] = error_auroc(entropy, raw, native)
                if regions:
                    scores |= _region_scores(pred.numpy(), native.numpy(), regions, spacing, include_hd95)
                per_case.append({"case_id": case_id, **scores})
                bar.update(1)
                if len(items) < overlays:
                    case = _distinct([z[i] for z in members])
                    pre = case[0] if len(case) == 1 else mean_probabilities(case, 0)
                    items.append(outputs.overlay_item(batch, i, pre.argmax(0).cpu(), pred, native, u_native,
                                                      None if unc is None else unc[i, 0].cpu()))
    finally:
        bar.close()
        model.train(was_training)
    return per_case, items


def save_png_atomic(array: np.ndarray, path: Path) -> Path:
    """Write a uint8/uint16 array as PNG through a temporary file and ``os.replace`` (never a partial file)."""
    with atomic_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def _member_bands(logits: Sequence[torch.Tensor], size: tuple[int, int]):
    """``(columns, [band of each member])``: every member's logits resized band by band, the same columns at once."""
    streams = [resize_logits_in_blocks(z.float(), size) for z in logits]
    for parts in zip(*streams):
        yield parts[0][0], [band for _, band in parts]


def _native_maps_2d(logits: Sequence[torch.Tensor], unc: torch.Tensor | None, size: tuple[int, int]):
    """Arg-max ``[H, W]`` int64, normalised softmax entropy ``[H, W]`` float32 (tensors on the CPU) and UAFS map
    (float32 array ``[H, W]`` or ``None``) at the native ``size`` of one case (``logits``: one ``[1, K, h, w]`` per
    ensemble member, ``unc`` ``[1, 1, h, w]``).

    The logits are resized band by band (:func:`dragsaw.metrics.resize_logits_in_blocks`) and each band is reduced
    at once, so memory holds these three maps plus one band, not ``K x H x W`` floats. One member: the arg-max and
    entropy of its resized logits; several: of the mean of their softmax probabilities at the native size.
    """
    pred = torch.empty(size, dtype=torch.int64)
    entropy = torch.empty(size, dtype=torch.float32)
    for cols, bands in _member_bands(_distinct(logits), size):
        if len(bands) == 1:
            pred[:, cols] = bands[0].argmax(1)[0].cpu()
            entropy[:, cols] = softmax_entropy(bands[0])[0, 0].cpu()
        else:
            p = mean_probabilities(bands)
            pred[:, cols] = p.argmax(1)[0].cpu()
            entropy[:, cols] = _probability_entropy(p)[0, 0].cpu()
            del p
        del bands
    return pred, entropy, None if unc is None else _native_uncertainty(unc, size)


def _native_uncertainty(unc: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The UAFS map ``[1, 1, h, w]`` resized to ``size`` (bilinear, band by band) and clamped to [0, 1]: float32
    ``[H, W]``."""
    out = np.empty(size, dtype=np.float32)
    for cols, band in resize_logits_in_blocks(unc.float(), size):
        out[:, cols] = band[0, 0].clamp(0, 1).cpu().numpy()
    return out


def _write_prediction(out_dir: Path, stem: str, image: np.ndarray, pred: np.ndarray, probs: np.ndarray, unc,
                      num_classes: int):
    """``pred``: uint8 arg-max [H, W]; ``probs``: the foreground probability as uint8 [H, W] (``round(255 p)``) for
    binary models, the class probabilities as float16 [K, H, W] otherwise; ``unc``: float [H, W] in [0, 1] or None."""
    written = [save_png_atomic(pred * 255 if num_classes == 2 else pred, out_dir / f"{stem}_mask.png")]
    if num_classes == 2:
        written.append(save_png_atomic(probs, out_dir / f"{stem}_prob.png"))
    else:
        target = out_dir / f"{stem}_probs.npy"
        with atomic_file(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, probs)
        written.append(target)
    if unc is not None:
        written.append(save_png_atomic((unc * 255).round().astype(np.uint8), out_dir / f"{stem}_uncertainty.png"))
    step = overlay_step(pred.shape)  # a preview: large images are subsampled so the overlay costs bounded memory
    if step > 1:
        image = image[..., ::step, ::step]
        pred = pred[::step, ::step]
        unc = None if unc is None else unc[::step, ::step]
    written.append(save_overlay_png(image, pred, out_dir / f"{stem}_overlay.png", uncertainty=unc))
    return written


OVERLAY_MAX_SIDE = 2048
"""The ``_overlay.png`` preview of a larger image is subsampled to at most this many pixels on its long side."""


def overlay_step(shape: Sequence[int]) -> int:
    """The integer subsampling step of an ``[H, W]`` image's overlay: 1 up to :data:`OVERLAY_MAX_SIDE` pixels on the
    long side, else ``ceil(max(H, W) / OVERLAY_MAX_SIDE)`` (the mask and probability PNGs stay at full size)."""
    return max(1, -(-max(int(v) for v in shape) // OVERLAY_MAX_SIDE))


def _stem(path: Path) -> str:
    """A volume's case name (:func:`dragsaw.data.io.formats.volume_stem`), else the file stem."""
    return volume_stem(path) or path.stem


_INPUT_ERRORS = (DragsawError, OSError, ValueError, RuntimeError)
"""What a bad input raises: reported for that input, the others go on."""


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _PredictInputs(Dataset):
    """The inputs of :func:`predict_files`, checked and read (in DataLoader workers when ``num_workers > 0``).

    Item ``i`` is ``jobs[i]`` checked and read by the model's reader (``outputs.load``), or ``{"error": reason}``
    for a bad input, so that one bad file does not stop the loader.
    """

    def __init__(self, jobs: list[tuple[Path, str]], outputs: _Outputs, reader, in_channels: int | None) -> None:
        self.jobs, self.outputs, self.reader, self.in_channels = jobs, outputs, reader, in_channels

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        path, _ = self.jobs[index]
        try:
            _check_file(path)
            self.outputs.check_input(path, self.in_channels)
            return self.outputs.load(self.reader, path)
        except _INPUT_ERRORS as exc:
            return {"error": _reason(exc)}


def _as_is(item):
    """The DataLoader's per-item ``collate_fn``: items pass unchanged (no batching, no numpy-to-tensor)."""
    return item


def _predict_image(model, loaded: dict, path: Path, out_dir: Path, config, settings: InferenceSettings,
                   device, postprocess: str = "none") -> list[Path]:
    dc = config.data
    size = loaded["size"]
    members, unc = infer_members(model, loaded["image"].to(device), settings)
    # native-size outputs made a band of columns at a time: memory holds the outputs and one band of K x H x w
    # floats, never the whole K x H x W resized logits and their softmax; an ensemble's members are resized to the
    # native size and their softmax probabilities averaged there
    binary = dc.num_classes == 2
    pred = np.empty(size, dtype=np.uint8)
    probs = np.empty(size if binary else (members[0].shape[1], *size), dtype=np.uint8 if binary else np.float16)
    for cols, bands in _member_bands(members, size):
        p = mean_probabilities(bands)[0].cpu()
        del bands
        pred[:, cols] = p.argmax(0).numpy()  # class indices < 256, cast as .astype(np.uint8) would
        probs[..., cols] = (p[1].numpy() * 255).round() if binary else p.numpy()  # cast to uint8 / float16
        del p
    pred = postprocess_prediction(pred, dc.num_classes, postprocess)  # the mask only; probabilities stay
    unc = None if unc is None else _native_uncertainty(unc, size)
    return _write_prediction(out_dir, path.stem, loaded["native"].numpy(), pred, probs, unc, dc.num_classes)


def _predict_volume(model, loaded: dict, path: Path, out_dir: Path, config, settings: InferenceSettings, device,
                    probabilities: bool, postprocess: str = "none") -> list[Path]:
    members, unc = infer_members(model, loaded["image"].to(device), settings)
    meta = loaded["meta"]
    stem = _stem(path)
    # one member: the arg-max of its logits; several: of their mean softmax probabilities (network space, one grid)
    distinct = _distinct(members)
    scores = distinct[0][0] if len(distinct) == 1 else mean_probabilities([z[0] for z in distinct], 0)
    pred = to_original_geometry(scores.argmax(0).cpu().numpy(), meta)
    pred = postprocess_prediction(np.asarray(pred), config.data.num_classes, postprocess)
    written = [write_nifti(np.asarray(pred), meta["affine"], out_dir / f"{stem}_seg.nii.gz")]
    if probabilities:
        probs = to_original_geometry(mean_probabilities([z[0] for z in members], 0).cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(probs, dtype=np.float32), meta["affine"], out_dir / f"{stem}_probs.nii.gz"))
    if unc is not None:
        u = to_original_geometry(unc[0, 0].float().cpu().numpy(), meta)
        written.append(write_nifti(np.asarray(u, dtype=np.float32), meta["affine"], out_dir / f"{stem}_uncertainty.nii.gz"))
    return written


def _check_file(path: Path) -> None:
    """Raise a :class:`DataError` naming ``path`` when it is missing or empty (a DICOM series folder passes)."""
    if path.is_dir() and is_volume(path):
        return
    require_file(path, "input", missing_fix="check the path", empty_fix="copy or export it again")


def _check_channels(path: Path, channels: int, in_channels: int | None, kind: str, hint: str = "") -> None:
    if in_channels is not None and channels != in_channels:
        raise DataError(
            f"{path} has {channels} channel(s) but this run's model takes {in_channels}-channel {kind}", fix=f"convert "
            f"it to {in_channels} channel(s){hint} or use a run trained on such inputs"
        )


class _Outputs(abc.ABC):
    """What differs between predicting images and volumes, behind one interface: which files are inputs, how an
    input is checked and read, how per-case maps go back to the file's geometry, what files are written."""

    kind: str  # "2D image" / "volume"
    files: str  # what to give instead, in messages

    @abc.abstractmethod
    def accepts(self, path: Path) -> bool:
        """Whether ``path`` is an input of this kind (by its suffix)."""

    @abc.abstractmethod
    def stem(self, path: Path) -> str:
        """The name the outputs of ``path`` start with."""

    @abc.abstractmethod
    def check_input(self, path: Path, in_channels: int | None) -> None:
        """Raise a DataError naming ``path`` when it is no readable input with ``in_channels`` channels."""

    @abc.abstractmethod
    def load(self, reader, path: Path) -> dict:
        """``path`` read for the network by ``reader``: ``{"image": [1, C, *S], ...}``."""

    @abc.abstractmethod
    def native_maps(self, logits: Sequence[torch.Tensor], unc: torch.Tensor | None, meta: dict):
        """Arg-max (int64), normalised softmax entropy (float32, tensors on the CPU) and UAFS map (or ``None``) of
        one case (``logits``: one ``[1, K, *S]`` per ensemble member, ``unc`` ``[1, 1, *S]``) in the file's own
        geometry ``meta["shape"]``; several members: of their mean softmax probabilities."""

    @abc.abstractmethod
    def spacing(self, meta: dict) -> list[float] | None:
        """Voxel spacing in mm for HD95 (``None``: pixels)."""

    @abc.abstractmethod
    def overlay_item(self, batch: dict, i: int, pred_pre: torch.Tensor, pred: torch.Tensor, native: torch.Tensor,
                     u_native, unc_pre: torch.Tensor | None) -> dict:
        """One item for :func:`dragsaw.report.plot_overlays` from case ``i`` of ``batch``."""

    @abc.abstractmethod
    def names(self, path: Path, num_classes: int, uncertainty: bool, probabilities: bool) -> list[str]:
        """The names of the files :func:`predict_files` writes for ``path``."""

    @abc.abstractmethod
    def predict(self, model, loaded: dict, path: Path, out_dir: Path, config, settings, device,
                probabilities: bool, postprocess: str = "none") -> list[Path]:
        """Predict one loaded input and write its files into ``out_dir``; returns their paths."""


class _ImageOutputs(_Outputs):
    kind, files = "2D image", "image files"

    def accepts(self, path: Path) -> bool:
        return not is_volume(path)

    def stem(self, path: Path) -> str:
        return path.stem

    def check_input(self, path: Path, in_channels: int | None) -> None:
        hint = {1: " (grayscale)", 3: " (RGB)"}.get(in_channels, "")
        _check_channels(path, image_channels(path), in_channels, "images", hint)  # DataError for non-images

    def load(self, reader, path: Path) -> dict:
        item = reader.read_input(path)
        return {"image": item["image"][None], "size": tuple(item["meta"]["shape"]),
                "native": torch.as_tensor(np.ascontiguousarray(read_image(path)))}  # tensors: shared from workers

    def native_maps(self, logits, unc, meta):  # a band of columns at a time (never K x H x W floats at once)
        return _native_maps_2d(logits, unc, tuple(meta["shape"]))

    def spacing(self, meta):
        return None

    def overlay_item(self, batch, i, pred_pre, pred, native, u_native, unc_pre):
        return {"image": read_image(batch["meta"][i]["path"]), "label": native.numpy(), "pred": pred.numpy(),
                "case_id": batch["case_id"][i], **({"uncertainty": u_native} if u_native is not None else {})}

    def names(self, path, num_classes, uncertainty, probabilities):
        stem = path.stem
        return [f"{stem}_mask.png", f"{stem}_prob.png" if num_classes == 2 else f"{stem}_probs.npy",
                *([f"{stem}_uncertainty.png"] if uncertainty else []), f"{stem}_overlay.png"]

    def predict(self, model, loaded, path, out_dir, config, settings, device, probabilities, postprocess="none"):
        return _predict_image(model, loaded, path, out_dir, config, settings, device, postprocess)


class _VolumeOutputs(_Outputs):
    kind, files = "volume", "NIfTI volumes"

    def accepts(self, path: Path) -> bool:
        return is_volume(path)

    def stem(self, path: Path) -> str:
        return _stem(path)

    def check_input(self, path: Path, in_channels: int | None) -> None:
        import nibabel as nib

        if match_volume_format(path) is not NIFTI:  # NRRD, DICOM series, MetaImage: DataError names the fix
            head = read_header(path, "input")
            _check_channels(path, head.channels, in_channels, "volumes")
            return
        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise DataError(f"{path} is not a readable NIfTI volume ({type(exc).__name__}: {exc})", fix="check that "
                            "it is a complete .nii/.nii.gz file") from exc
        _check_channels(path, shape[3] if len(shape) == 4 else 1, in_channels, "volumes (modalities on the 4th axis)")

    def load(self, reader, path: Path) -> dict:
        item = reader.read_input(path)
        return {"image": item["image"][None], "meta": item["meta"]}

    def native_maps(self, logits, unc, meta):
        logits = _distinct(logits)
        if len(logits) == 1:
            scores, entropy = logits[0], softmax_entropy(logits[0].float())
        else:  # the members' mean softmax probabilities in the network space (one grid: the plans agree)
            scores = mean_probabilities(logits)
            entropy = _probability_entropy(scores)
        pred = torch.from_numpy(np.asarray(to_original_geometry(scores[0].argmax(0).cpu().numpy(), meta))).long()
        maps = [entropy[0, 0]] + ([] if unc is None else [unc[0, 0]])
        mapped = to_original_geometry(torch.stack(maps).float().cpu(), meta)  # one resampling for both
        return pred, mapped[0], (None if unc is None else mapped[1])

    def spacing(self, meta):
        return [float(v) for v in np.sqrt((np.asarray(meta["affine"])[:3, :3] ** 2).sum(0))]

    def overlay_item(self, batch, i, pred_pre, pred, native, u_native, unc_pre):
        return _overlay_item_3d(batch, pred_pre, unc_pre, batch["case_id"][i], i)

    def names(self, path, num_classes, uncertainty, probabilities):
        stem = _stem(path)
        return [f"{stem}_seg.nii.gz", *([f"{stem}_probs.nii.gz"] if probabilities else []),
                *([f"{stem}_uncertainty.nii.gz"] if uncertainty else [])]

    def predict(self, model, loaded, path, out_dir, config, settings, device, probabilities, postprocess="none"):
        return _predict_volume(model, loaded, path, out_dir, config, settings, device, probabilities, postprocess)


def native_prediction(logits: torch.Tensor, meta: dict, spatial_dims: int) -> torch.Tensor:
    """The arg-max of one case's ``logits`` ``[1, K, *S]`` (network space) in the file's own geometry
    ``meta["shape"]``: int64 on the CPU (images: logits resized before the arg-max; volumes: mapped back with the
    file's affine)."""
    return _outputs(spatial_dims).native_maps([logits], None, meta)[0]


def _outputs(spatial_dims: int) -> _Outputs:
    """The input/output hooks of a ``spatial_dims``-D model (the one place inference looks at the dimension)."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"inference supports 2D and 3D models, got spatial_dims={spatial_dims!r}")
    return _ImageOutputs() if spatial_dims == 2 else _VolumeOutputs()


def prediction_names(path: str | Path, *, spatial_dims: int, num_classes: int, uncertainty: bool,
                     probabilities: bool = False) -> list[str]:
    """The names of the files :func:`predict_files` writes for the input ``path`` (see there for what they hold).

    ``uncertainty``: the model has UAFS blocks; ``probabilities``: 3D class probabilities were asked for.
    """
    return _outputs(spatial_dims).names(Path(path), num_classes, uncertainty, probabilities)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_predict_manifest(out_dir: str | Path) -> dict[str, dict]:
    """The files an earlier ``predict`` wrote into ``out_dir``: ``{name: {"sha256", "size", "input"}}`` ({} if none).

    Raises:
        DataError: the manifest exists but cannot be read (it is then not trusted: nothing there is replaced).
    """
    path = Path(out_dir) / PREDICT_MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise ValueError("'files' is not a mapping of file names to records")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}, the record of the files dragsaw predict wrote into {out_dir}, cannot be read ({exc}); without "
            "it no file there can be replaced safely", fix="choose another --out folder (or restore the file)"
        ) from exc
    return files


def _listing(paths: list, limit: int = 5) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_out_dir(out_dir: Path, inputs: list[Path], planned: dict[str, Path], overwrite: bool) -> dict[str, dict]:
    """Refuse (DataError) an ``out_dir`` where predicting could replace an input or a file dragsaw did not write.

    Without ``overwrite``: ``out_dir`` must hold none of the inputs and none of the ``planned`` output names. With
    ``overwrite``: only files listed, unchanged, in the manifest may be replaced, and never an input. Returns the
    manifest.
    """
    if not out_dir.is_dir():
        return {}
    here = out_dir.resolve()
    given = {p.resolve() for p in inputs if p.exists()} | {Path(os.path.abspath(p)) for p in inputs}
    inside = [p for p in inputs if p.exists() and p.resolve().parent == here]
    existing = [name for name in planned if os.path.lexists(out_dir / name)]
    flag = "--overwrite"
    if not overwrite:
        if inside or existing:
            what = []
            if inside:
                what.append(f"{len(inside)} of the input file(s) ({_listing(inside)})")
            if existing:
                what.append(f"{len(existing)} file(s) predict would write ({_listing([out_dir / n for n in existing])})")
            raise DataError(
                f"the output folder --out {out_dir} already holds {' and '.join(what)}; predict never replaces your "
                f"files", fix=f"choose another --out (a new or empty folder), or pass {flag} to replace the outputs "
                f"of an earlier dragsaw predict into this folder (recorded in {PREDICT_MANIFEST}; input files and "
                "files dragsaw did not write are never replaced)"
            )
        return read_predict_manifest(out_dir)
    manifest = read_predict_manifest(out_dir)
    clash = [out_dir / n for n in existing
             if (out_dir / n).resolve() in given or Path(os.path.abspath(out_dir / n)) in given]
    if clash:
        raise DataError(
            f"predicting into --out {out_dir} would replace the input file(s) {_listing(clash)} (e.g. the ground truth "
            f"case_mask.png next to case.png); inputs are never replaced, even with {flag}", fix="choose another --out "
            "folder, or rename the input files"
        )
    foreign = [out_dir / n for n in existing if n not in manifest]
    if foreign:
        raise DataError(
            f"--out {out_dir} holds {_listing(foreign)}, which predict would write but which dragsaw did not write "
            f"(they are not in {out_dir / PREDICT_MANIFEST}); {flag} replaces only earlier dragsaw outputs", fix="move "
            "those files away or choose another --out folder"
        )
    changed = [out_dir / n for n in existing
               if not (out_dir / n).is_file() or (out_dir / n).stat().st_size != manifest[n].get("size")
               or _sha256(out_dir / n) != manifest[n].get("sha256")]
    if changed:
        raise DataError(
            f"--out {out_dir} holds {_listing(changed)}, written by dragsaw predict but changed since (e.g. corrected "
            f"by hand); {flag} replaces only unchanged dragsaw outputs", fix="move those files away or choose another "
            "--out folder"
        )
    return manifest


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    config,
    *,
    device: torch.device | str = "cpu",
    probabilities: bool = False,
    in_channels: int | None = None,
    overwrite: bool = False,
    precision: str = "32-true",
    tta: bool | None = None,
    sw_batch_size: int | None = None,
    progress: bool = False,
    num_workers: int = 0,
    plan: Plan | None = None,
    postprocess: str = "none",
) -> tuple[list[Path], dict[str, str]]:
    """Predict every input with the run's configuration and plan and write the outputs to ``out_dir``.

    The inputs are preprocessed as the model's training data was: ``plan`` (the model's
    :class:`dragsaw.plan.Plan`, e.g. ``task.plan`` of :func:`dragsaw.engine.load_task`) gives the input size and
    normalisation (2D) or the target spacing, modalities and CT statistics (3D); ``None`` derives the plan from
    ``config`` alone (:meth:`dragsaw.plan.Plan.from_config`, for configurations that carry those values).
    ``in_channels`` None takes the plan's.

    2D images, per ``<stem>``: ``_mask.png`` (native size; {0,255} for binary, class indices otherwise),
    ``_prob.png`` (foreground probability; ``_probs.npy`` [K,H,W] for multi-class), ``_uncertainty.png`` (UAFS
    map, when the model has UAFS) and ``_overlay.png`` (a preview, subsampled to at most 2048 pixels on its long side). Volumes (``.nii``/``.nii.gz``; with
    ``dragsaw[formats]`` also NRRD and DICOM series folders, with ``dragsaw[itk]`` MetaImage, see :mod:`dragsaw.data.io.formats`):
    ``_seg.nii.gz`` in the input's geometry (same shape, and the input's affine in RAS), whatever the input's
    format, ``_uncertainty.nii.gz`` with UAFS, ``_probs.nii.gz`` (channels last) with ``probabilities``.

    Bad inputs do not stop the others: they are returned as ``{path: reason}`` and nothing is written for them
    (each input's outputs are made in a hidden folder inside ``out_dir`` and moved out only when all are complete).
    Two different inputs with the same stem (``a.png``, ``a.jpg``) would overwrite each other's outputs: the later
    one is reported as bad (the same file given twice is predicted once). With ``in_channels`` (the channels the
    model was trained on), an input with another channel count is reported before it reaches the network.

    Inputs are never modified. ``out_dir`` must not hold any input nor any file about to be written; with
    ``overwrite`` it may, but then only files an earlier call wrote there, unchanged, are replaced (they are listed
    in ``out_dir``/:data:`PREDICT_MANIFEST`, which every call updates atomically), and never an input.

    How: ``model`` is moved to ``device`` (a name or :class:`torch.device`, checked by :func:`resolve_device`:
    ``"auto"``, ``"cpu"``, ``"cuda:1"``, ...) and run at ``precision`` (one of :data:`PRECISIONS`); ``tta`` (None:
    the run's ``train.mirror``) averages over the flips of every spatial axis; ``sw_batch_size`` (None: the run's
    ``train.sw_batch_size``) is the number of windows per forward for volumes. With ``num_workers`` > 0 the inputs
    are checked and read in that many DataLoader worker processes, ahead of the network (up to ``2 * num_workers``
    inputs wait in memory); each input's outputs are written as soon as it is predicted, in input order.
    ``progress`` shows a bar of the inputs done on stderr.

    ``model`` may be an :class:`Ensemble`: the probabilities (and the uncertainty maps) written are the means of its
    members' (probabilities, not logits, are averaged); ``config`` / ``plan`` are then the first member's (see
    :func:`check_ensemble`). ``postprocess`` (one of :data:`POSTPROCESS`) is applied to the mask / segmentation
    in the input's geometry; the probability and uncertainty maps are not changed by it.

    Returns:
        ``(written_files, failures)``.

    Raises:
        ConfigError: ``device``, ``precision``, ``sw_batch_size`` or ``num_workers`` is not usable here (the message
            names the value and the fix); nothing is written then.
        DataError: ``out_dir`` holds inputs or files this call would write (see above); nothing is written then.
    """
    out_dir = Path(out_dir)
    device = resolve_device(device)
    if plan is None:
        plan = Plan.from_config(config, in_channels=in_channels)
    if in_channels is None:
        in_channels = plan.in_channels
    settings = InferenceSettings.from_config(config, mirror=tta, sw_batch_size=sw_batch_size, precision=precision,
                                             plan=plan)
    autocast_dtype(settings.precision, device)
    postprocess = _check_postprocess(postprocess)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers!r} must be a whole number >= 0 (0: read the inputs in the main "
                          "process); use e.g. --num-workers 2")
    uncertainty = any(isinstance(m, UncertaintySelect) for m in model.modules())
    inputs = [Path(p) for p in inputs]
    failures: dict[str, str] = {}
    stems: dict[str, Path] = {}
    jobs: list[tuple[Path, str]] = []
    outputs = _outputs(settings.spatial_dims)
    planned: dict[str, Path] = {}
    for path in inputs:
        stem = outputs.stem(path)
        if not outputs.accepts(path):
            given = "volume" if is_volume(path) else "2D image"
            failures[str(path)] = (f"a {given} given to a {settings.spatial_dims}D model; give {outputs.files}")
            continue
        if stem in stems:
            if stems[stem].resolve() != path.resolve():
                failures[str(path)] = (f"its outputs ({stem}_*) would overwrite those of {stems[stem]}; rename one "
                                       "of the two or predict them into separate --out folders")
            continue
        stems[stem] = path
        jobs.append((path, stem))
        for name in outputs.names(path, config.data.num_classes, uncertainty, probabilities):
            planned[name] = path
    manifest = _check_out_dir(out_dir, inputs, planned, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.to(device)
    model.eval()
    written: list[Path] = []
    recorded = len(written)
    last_record = time.monotonic()

    def record() -> None:  # the manifest lists every file written so far (at most once a second, and at the end)
        nonlocal recorded, last_record
        if len(written) == recorded:
            return
        write_json_atomic({"tool": "dragsaw predict", "version": 1, "files": manifest}, out_dir / PREDICT_MANIFEST)
        recorded, last_record = len(written), time.monotonic()

    loader = DataLoader(_PredictInputs(jobs, outputs, plan.reader(value_map=config.data.value_map), in_channels),
                        batch_size=None, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_is)
    bar = tqdm(total=len(jobs), desc="predict", unit="file", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        for index, loaded in enumerate(loader):  # in input order; workers read ahead
            path, stem = jobs[index]
            if "error" in loaded:  # found while checking or reading it: nothing of it reached the network
                failures[str(path)] = loaded["error"]
                bar.set_postfix(failed=len(failures), refresh=False)
                bar.update(1)
                continue
            staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
            moved: list[Path] = []
            try:
                files = outputs.predict(model, loaded, path, staging, config, settings, device, probabilities,
                                        postprocess)
                entries = {file.name: {"sha256": _sha256(file), "size": file.stat().st_size,
                                       "input": os.path.abspath(path)} for file in files}
                for file in files:  # all outputs of this input are complete: move them out together
                    os.replace(file, out_dir / file.name)
                    moved.append(out_dir / file.name)
                manifest.update(entries)
                written += moved
                if time.monotonic() - last_record > 1.0:
                    record()
            except _INPUT_ERRORS as exc:
                for file in moved:
                    file.unlink(missing_ok=True)  # no partial set of outputs for this input
                failures[str(path)] = _reason(exc)
                bar.set_postfix(failed=len(failures), refresh=False)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
        record()
    return written, failures
