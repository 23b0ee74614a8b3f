"""evaluate_loader's error-detection AUROCs against a naive pair count on the model's own maps, 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dragsaw.inference import InferenceSettings, evaluate_loader
from dragsaw.metrics import case_metrics
from dragsaw.uafs import UncertaintySelect

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def tiny_model(dims: int, uafs: bool) -> nn.Module:
    torch.manual_seed(dims)
    layers = [CONV[dims](1, 4, 3, padding=1)]
    if uafs:
        # a wide spread of H: at the default init many values lie within float32 rounding of 1, where the sliding
        # window's blending and the resampling may reorder them
        layers.append(UncertaintySelect(4, spatial_dims=dims, init_scale=4.0))
    layers.append(CONV[dims](4, 2, 1))
    return nn.Sequential(*layers).eval()


def naive_auroc(score: np.ndarray, wrong: np.ndarray) -> float:
    """Every (wrong, right) pair: 1 when the wrong pixel scores higher, 1/2 for a tie; NaN without both kinds."""
    a, b = score[wrong], score[~wrong]
    if a.size == 0 or b.size == 0:
        return math.nan
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b) / (a.size * b.size)


def entropy_by_hand(logits: torch.Tensor) -> np.ndarray:
    """Normalised entropy of [K, *S] logits over K, in float64."""
    p = torch.softmax(logits.double(), 0).numpy()
    return -(p * np.log(p)).sum(0) / np.log(p.shape[0])


def reference_maps(model: nn.Module, image: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and the UAFS map of one image, both resized to ``size`` (bilinear / trilinear)."""
    mode = "bilinear" if image.ndim == 4 else "trilinear"
    with torch.no_grad():
        hidden = model[0](image)
        logits = model(image)
        unc = model[1].uncertainty(hidden) if isinstance(model[1], UncertaintySelect) else None
    logits = F.interpolate(logits, size=size, mode=mode, align_corners=False)
    unc = None if unc is None else F.interpolate(unc, size=size, mode=mode, align_corners=False).clamp(0, 1)
    return logits[0], unc


@pytest.mark.parametrize("uafs", [True, False])
def test_2d_aurocs_at_the_native_size(uafs):
    model = tiny_model(2, uafs)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1, 8, 8, generator=g)
    natives = [torch.randint(0, 2, (6, 5), generator=g), torch.randint(0, 2, (8, 8), generator=g)]
    batch = {"image": images, "label_native": natives, "case_id": ["a", "b"],
             "meta": [{"shape": tuple(n.shape), "path": "unused"} for n in natives]}
    per_case, _ = evaluate_loader(model, [batch], 2, include_hd95=False)
    for i, case in enumerate(per_case):
        native = natives[i]
        logits, unc = reference_maps(model, images[i : i + 1], tuple(native.shape))
        pred = logits.argmax(0)
        wrong = (pred != native).numpy()
        assert set(case) == {"case_id", "auroc_uafs", "auroc_entropy", *case_metrics(pred, native, 2, include_hd95=False)}
        assert case["auroc_entropy"] == pytest.approx(naive_auroc(entropy_by_hand(logits), wrong), abs=1e-9)
        if uafs:
            assert case["auroc_uafs"] == pytest.approx(naive_auroc(unc[0, 0].numpy(), wrong), abs=1e-9)
        else:
            assert math.isnan(case["auroc_uafs"])


def test_3d_aurocs_in_the_original_geometry():
    model = tiny_model(3, True)
    g = torch.Generator().manual_seed(1)
    size = (6, 5, 4)
    image = torch.randn(1, 1, *size, generator=g)
    native = torch.randint(0, 2, size, generator=g)
    eye = np.eye(4)
    batch = {"image": image, "label": native[None], "label_native": [native], "case_id": ["v"],
             "meta": [{"affine": eye, "affine_preprocessed": eye, "shape": list(size)}]}
    settings = InferenceSettings(spatial_dims=3, roi_size=size, sw_batch_size=1)  # one window: the plain forward
    per_case, _ = evaluate_loader(model, [batch], 2, settings=settings, include_hd95=False)
    logits, unc = reference_maps(model, image, size)
    wrong = (logits.argmax(0) != native).numpy()
    assert 0 < wrong.sum() < wrong.size
    assert per_case[0]["auroc_entropy"] == pytest.approx(naive_auroc(entropy_by_hand(logits), wrong), abs=1e-9)
    assert per_case[0]["auroc_uafs"] == pytest.approx(naive_auroc(unc[0, 0].numpy(), wrong), abs=1e-9)
