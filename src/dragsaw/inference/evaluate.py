"""Scoring a model on a data loader: per-case metrics in each case's own geometry, per region for volumes."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..metrics import case_metrics, error_auroc
from .ensemble import distinct_logits, infer_members, mean_probabilities
from .forward import InferenceSettings
from .outputs import outputs_for
from .postprocess import check_postprocess, postprocess_prediction


__all__ = ["evaluate_loader"]


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
    alternatives: Sequence[str] = (),
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
    arg-max before it is scored (the uncertainty scores use the arg-max before post-processing). Each of
    ``alternatives`` (other post-processings) adds the case's foreground Dice under it, ``dice_fg@<name>``, from the
    same prediction (no second forward pass), to compare them (:func:`dragsaw.engine.run.evaluate_run`'s ``auto``).

    Returns:
        ``(per_case, overlay_items)``: one metrics dict per case (with ``case_id``), and up to ``overlays`` items
        for :func:`dragsaw.report.plot_overlays`.
    """
    settings = settings or InferenceSettings()
    postprocess = check_postprocess(postprocess)
    alternatives = [check_postprocess(a) for a in alternatives]
    outputs = outputs_for(settings.spatial_dims)
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
                for alt in alternatives:
                    scores[f"dice_fg@{alt}"] = case_metrics(postprocess_prediction(raw, num_classes, alt), native,
                                                            num_classes, include_hd95=False)["dice_fg"]
                per_case.append({"case_id": case_id, **scores})
                bar.update(1)
                if len(items) < overlays:
                    case = distinct_logits([z[i] for z in members])
                    pre = case[0] if len(case) == 1 else mean_probabilities(case, 0)
                    items.append(outputs.overlay_item(batch, i, pre.argmax(0).cpu(), pred, native, u_native,
                                                      None if unc is None else unc[i, 0].cpu()))
    finally:
        bar.close()
        model.train(was_training)
    return per_case, items
