"""Dataset-wide statistics that planning needs: CT intensity statistics over foreground voxels (nnU-Net's)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dragsaw.data.cases import Case
from dragsaw.data.io.volumes import LoadVolumed, case_to_dict
from dragsaw.data.transforms.volumes import check_modalities, is_ct
from dragsaw.errors import ConfigError, DataError

__all__ = ["ct_statistics"]


def ct_statistics(
    cases: Sequence[Case],
    *,
    modalities: Sequence[str] | None = None,
    max_cases: int = 50,
    samples_per_case: int = 10_000,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """Dataset-wide CT intensity statistics over foreground voxels (label > 0), as nnU-Net collects them.

    Up to ``max_cases`` cases are read in their own geometry (a seeded choice when there are more); from each,
    up to ``samples_per_case`` foreground voxels are drawn (all of them when there are fewer). The mean, the
    standard deviation (population) and the 0.5th/99.5th percentiles (numpy's linear interpolation) of the pooled
    values are returned per CT channel.

    Args:
        cases: Labelled training cases (never test cases: that would leak).
        modalities: One name per channel; None takes ``case.extra["modalities"]`` (as :func:`decathlon` sets it).
        max_cases: Most cases read.
        samples_per_case: Most foreground voxels kept per case.
        seed: Seed of the case choice and the voxel draws.

    Returns:
        ``{channel index: {"mean", "std", "percentile_00_5", "percentile_99_5"}}`` for every CT channel.

    Raises:
        ConfigError: no cases, no modality names, no CT channel, bad counts.
        DataError: unlabeled cases, unreadable files, or no foreground voxel at all.
    """
    cases = list(cases)
    if not cases:
        raise ConfigError("ct_statistics needs at least one labelled case, got none")
    if modalities is None:
        modalities = cases[0].extra.get("modalities")
        if not modalities:
            raise ConfigError("ct_statistics: pass modalities=[...] (the cases carry no extra['modalities'])")
    names = check_modalities(modalities)
    ct_channels = [c for c, m in enumerate(names) if is_ct(m)]
    if not ct_channels:
        raise ConfigError(f"ct_statistics: no CT channel among modalities {list(names)}; only CT needs statistics")
    for name, value in (("max_cases", max_cases), ("samples_per_case", samples_per_case)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(int(seed))
    if len(cases) > max_cases:
        cases = [cases[i] for i in sorted(rng.choice(len(cases), size=max_cases, replace=False))]
    load = LoadVolumed()
    pooled: dict[int, list[np.ndarray]] = {c: [] for c in ct_channels}
    for case in cases:
        if case.mask is None:
            raise DataError(f"case {case.case_id!r} ({case.image}) has no label; ct_statistics needs labelled cases")
        d = load(case_to_dict(case))
        image = d["image"].as_tensor().numpy()
        if image.shape[0] != len(names):
            raise DataError(
                f"image {case.image} has {image.shape[0]} channel(s) but modalities are {list(names)}",
                fix="give one modality name per channel"
            )
        fg = d["label"].as_tensor().numpy()[0] > 0
        take = None
        n_fg = int(fg.sum())
        if n_fg > samples_per_case:
            take = rng.choice(n_fg, size=samples_per_case, replace=False)
        for c in ct_channels:
            values = image[c][fg].astype(np.float64)
            pooled[c].append(values if take is None else values[take])
    out: dict[int, dict[str, float]] = {}
    for c in ct_channels:
        values = np.concatenate(pooled[c])
        if values.size == 0:
            raise DataError(
                f"ct_statistics: the {len(cases)} case(s) read have no foreground voxel (label > 0)",
                fix="check the labels or pass labelled cases"
            )
        lo, hi = np.percentile(values, [0.5, 99.5])
        out[c] = {"mean": float(values.mean()), "std": float(values.std()),
                  "percentile_00_5": float(lo), "percentile_99_5": float(hi)}  # fmt: skip
    return out
