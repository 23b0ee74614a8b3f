"""Ensembles: several runs' softmax probabilities (and UAFS maps) averaged, and the check that runs may be combined."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..plan import Plan
from .forward import InferenceSettings, infer


__all__ = [
    "Ensemble", "infer_members", "mean_probabilities", "distinct_logits", "probability_entropy",
    "ENSEMBLE_PLAN_KEYS", "check_ensemble",
]


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


def distinct_logits(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``logits`` as a list, cut to its first element when every member's logits equal it bit for bit (the same run
    given twice): their mean probabilities are its own, so the one-model path (arg-max and entropy of the logits)
    gives exactly the single run's results."""
    logits = list(logits)
    return logits[:1] if all(torch.equal(z, logits[0]) for z in logits[1:]) else logits


def probability_entropy(probs: torch.Tensor) -> torch.Tensor:
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
