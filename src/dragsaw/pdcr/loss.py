"""The dragsaw loss between sampled embeddings, weighted by label-composition affinity (METHOD.md section 0).

For embeddings ``u_n`` (anchors) and ``v_m`` (candidates) with compositions ``phi_n``, ``psi_m``::

    s_nm = (cos(u_n, v_m) - 1) / T                 shifted cosine similarity, in [-2/T, 0]
    d_nm = 1/2 * || phi_n - psi_m ||_1              total-variation divergence, in [0, 1]
    a_nm = 1 - d_nm                                 affinity
    L    = mean_{b, n, m} [ -a_nm * s_nm + log sum_k exp(d_nk * s_nk) ]

The gradient with respect to ``s_nm`` is ``-a_nm + M * d_nm * q_nm`` (``q`` the softmax of ``d * s`` over the
candidates), so pairs of the same composition are pulled together and pairs of different composition pushed
apart, each in proportion to its affinity / divergence. ``orientation="reference-2d"`` swaps the two weights as
the paper's released 2D code does (which pulls *different* compositions together); it exists only to reproduce
that code.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dragsaw_loss", "ORIENTATIONS"]

ORIENTATIONS = ("intended", "reference-2d")


def _check_pair(emb: torch.Tensor, comp: torch.Tensor, emb_name: str, comp_name: str) -> None:
    for value, name in ((emb, emb_name), (comp, comp_name)):
        if not isinstance(value, torch.Tensor) or value.ndim != 3:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{name} must be a 3-D tensor ({'[B, N, D]' if name == emb_name else '[B, N, K]'}), got {shape}. "
                "Flatten sampled locations to the middle axis."
            )
    if emb.shape[:2] != comp.shape[:2]:
        raise ValueError(
            f"{emb_name} {tuple(emb.shape)} and {comp_name} {tuple(comp.shape)} disagree on batch or number of "
            "locations: give one composition vector per sampled embedding."
        )
    if emb.shape[1] == 0:
        raise ValueError(f"{emb_name} has no sampled locations (shape {tuple(emb.shape)}); sample at least one.")
    if not emb.dtype.is_floating_point:
        raise ValueError(f"{emb_name} must be floating point, got {emb.dtype}.")


def dragsaw_loss(
    emb_a: torch.Tensor,
    comp_a: torch.Tensor,
    emb_b: torch.Tensor | None = None,
    comp_b: torch.Tensor | None = None,
    temperature: float = 1.0,
    *,
    orientation: str = "intended",
) -> torch.Tensor:
    """Patch-dragsaw contrastive loss for one layer (or layer pair) and one patch size.

    Args:
        emb_a: anchor embeddings ``[B, N, D]``.
        comp_a: their label compositions ``[B, N, K]`` (probability vectors; an all-zero row marks a location
            without valid pixels, which is left out of every pair).
        emb_b: candidate embeddings ``[B, M, D]`` for the cross-layer loss; ``None`` for the in-layer loss
            (candidates = anchors).
        comp_b: compositions of ``emb_b``, ``[B, M, K]``; given exactly when ``emb_b`` is.
        temperature: ``T > 0``.
        orientation: ``"intended"`` (METHOD.md section 0) or ``"reference-2d"`` (swapped weights, for
            reproducing the released 2D code only).

    Returns:
        Scalar loss: the mean over the batch and all valid ``N x M`` ordered pairs (self-pairs included),
        float32 (float64 if an input is float64). Finite for any finite input, zero vectors included;
        computed in at least float32 even under autocast or for bf16/fp16 inputs. Zero (with a graph) when
        no pair is valid.

    Raises:
        ValueError: shapes that do not fit, mismatched batch sizes, a bad temperature or orientation.
    """
    _check_pair(emb_a, comp_a, "emb_a", "comp_a")
    if (emb_b is None) != (comp_b is None):
        raise ValueError("emb_b and comp_b go together: pass both (cross-layer loss) or neither (in-layer loss).")
    if emb_b is None:
        emb_b, comp_b = emb_a, comp_a
    else:
        _check_pair(emb_b, comp_b, "emb_b", "comp_b")
        if emb_b.shape[0] != emb_a.shape[0]:
            raise ValueError(
                f"batch sizes differ: emb_a {tuple(emb_a.shape)} vs emb_b {tuple(emb_b.shape)}; pairs are formed "
                "within one image, so both must come from the same batch."
            )
        if emb_b.shape[2] != emb_a.shape[2]:
            raise ValueError(
                f"embedding dimensions differ: emb_a D={emb_a.shape[2]} vs emb_b D={emb_b.shape[2]}; project both "
                "layers to a common dimension first (PatchDragsawLoss does this with learnable 1x1 projections)."
            )
    if comp_a.shape[2] != comp_b.shape[2]:
        raise ValueError(f"comp_a has K={comp_a.shape[2]} classes but comp_b has K={comp_b.shape[2]}.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}.")

    return series_loss(emb_a, comp_a.unsqueeze(0), emb_b, comp_b.unsqueeze(0), temperature, orientation)


def similarity(emb_a: torch.Tensor, emb_b: torch.Tensor | None, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """Shifted cosine similarity ``(cos - 1) / T`` of every anchor with every candidate, in ``dtype``.

    Shape:
        ``emb_a`` ``[B, N, D]``, ``emb_b`` ``[B, M, D]`` (``None``: the anchors themselves); returns ``[B, N, M]``.
    """
    eps = 1e-12  # as F.normalize: a vector shorter than eps is divided by eps (a zero vector stays zero)
    a = emb_a.to(dtype)
    if emb_b is None or emb_b is emb_a:  # one Gram matrix; the norms are its diagonal
        dots = torch.bmm(a, a.transpose(1, 2))
        norm_a = norm_b = dots.diagonal(dim1=1, dim2=2).clamp(min=eps * eps).sqrt()  # no sqrt'(0) = inf
    else:
        b = emb_b.to(dtype)
        dots = torch.bmm(a, b.transpose(1, 2))
        norm_a, norm_b = a.norm(dim=-1).clamp(min=eps), b.norm(dim=-1).clamp(min=eps)
    cos = dots / (norm_a.unsqueeze(-1) * norm_b.unsqueeze(-2))
    return (cos.clamp(-1.0, 1.0) - 1.0) / temperature


def grouped_loss(
    sim: torch.Tensor,
    comps_a: torch.Tensor,
    comps_b: torch.Tensor,
    orientation: str = "intended",
    temperature: float | None = None,
) -> torch.Tensor:
    """The loss of several similarity matrices at once, each with a series of patch compositions.

    Args:
        sim: ``[G, B, N, M]`` shifted cosine similarities (G groups, e.g. layers, of the same ``N`` and ``M``).
        comps_a: ``[P, G, B, N, K]`` anchor compositions for ``P`` patch sizes.
        comps_b: ``[P or 1, G, B, M, K]`` candidate compositions.
        temperature: the ``T`` of ``sim``, if known. Every logit then lies in ``[-2/T, 0]``, and for
            ``T >= 1/30`` the log-sum-exp needs no max shift (``exp(-60)`` is far from underflow in float32);
            ``None`` always takes the shifted form.

    Returns:
        ``[G]``: per group, the mean over patch sizes of the mean over its valid pairs (self-pairs included).
    """
    dtype = sim.dtype
    pa, pb = comps_a.to(dtype), comps_b.to(dtype)
    groups = pa.shape[:-2]
    # total variation 1/2 |phi - psi|_1 between every anchor and candidate composition: [P, G, B, N, M]
    div = torch.cdist(0.5 * pa.flatten(0, -3), 0.5 * pb.expand(*groups, -1, -1).flatten(0, -3), p=1)
    div = div.view(*pa.shape[:-1], pb.shape[-2]).clamp(0.0, 1.0)
    weighted = div * sim  # d * s
    # intended: pull with the affinity 1 - d, push with d; reference-2d: the two swapped
    pull, push = (sim - weighted, weighted) if orientation == "intended" else (weighted, sim - weighted)
    valid_a = pa.sum(-1) > 0  # [P, G, B, N]
    valid_b = (pb.sum(-1) > 0).to(dtype).unsqueeze(-1)  # [P or 1, G, B, M, 1]
    if temperature is not None and 2.0 / temperature <= 60.0:
        # sum_m valid_m exp(push_nm) as one matrix product; a row without valid candidates sums to 0 (and holds
        # no pair), clamped so that its log stays finite
        lse = torch.log((push.exp() @ valid_b).squeeze(-1).clamp(min=torch.finfo(dtype).tiny))
    else:
        # invalid candidates get the most negative finite logit: exp() -> 0 and no NaN in any gradient
        lse = torch.logsumexp(push.masked_fill(valid_b.transpose(-1, -2) == 0, torch.finfo(dtype).min), dim=-1)
    # sum over the valid pairs of row n: (valid candidates) * lse_n - sum_m valid_m * pull_nm
    candidates = valid_b.sum(-2)  # [P or 1, G, B, 1]
    rows = candidates * lse - (pull @ valid_b).squeeze(-1)  # [P, G, B, N]
    rows = rows.masked_fill(~valid_a, 0.0)
    pairs = (valid_a.sum(-1, keepdim=True) * candidates).sum((-2, -1))  # [P, G]
    per_size = rows.sum((-2, -1)) / pairs.clamp(min=1)
    return per_size.mean(0)


def series_loss(
    emb_a: torch.Tensor,
    comps_a: torch.Tensor,
    emb_b: torch.Tensor,
    comps_b: torch.Tensor,
    temperature: float,
    orientation: str = "intended",
) -> torch.Tensor:
    """Mean over a series of patch sizes of :func:`dragsaw_loss`, sharing one similarity matrix.

    ``comps_a[i]`` / ``comps_b[i]`` are the compositions for patch size ``i`` (``comps_b`` may hold a single
    entry used for every size). Inputs are assumed validated (the public entry points check them).

    Shape:
        ``emb_a`` ``[B, N, D]``, ``emb_b`` ``[B, M, D]``, ``comps_a`` ``[P, B, N, K]``, ``comps_b``
        ``[P or 1, B, M, K]``; returns a scalar.
    """
    dtype = torch.float64 if torch.float64 in (emb_a.dtype, emb_b.dtype) else torch.float32
    with torch.autocast(device_type=emb_a.device.type, enabled=False):
        sim = similarity(emb_a, emb_b, temperature, dtype)
        return grouped_loss(sim.unsqueeze(0), comps_a.unsqueeze(1), comps_b.unsqueeze(1), orientation,
                            temperature)[0]
