"""Train/val/test splits: official where the dataset has them, seeded where it does not, saved for resumption.

Rules of :func:`resolve_splits`:

1. A dataset's official ``"val"`` and ``"test"`` splits are used as they are.
2. Without an official test split (the adapter returned ``"all"`` or only ``"train"``), a seeded test split of
   ``test_fraction`` of the cases is carved first.
3. Without an official val split, a seeded val split of ``val_fraction`` of the remaining *training* cases is
   carved from them (never from test cases).
4. The result is written to ``path`` (``splits.json``) atomically; when that file exists it is reused verbatim, so
   a resumed or repeated run sees the same cases.

The seeded carving is independent of file listing order: cases are sorted by ``case_id`` before the permutation.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from monai.data import partition_dataset

from dragsaw.data.cases import Case
from dragsaw._atomic import write_text_atomic
from dragsaw.errors import ConfigError, DataError

__all__ = ["cross_validation_splits", "nested_subset", "resolve_splits", "SPLITS_FORMAT"]

SPLITS_FORMAT = 1
"""Version of the ``splits.json`` layout written by :func:`resolve_splits`."""

_SPLITS = ("train", "val", "test")


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _carve(cases: list[Case], fraction: float, rng: np.random.Generator, what: str) -> tuple[list, list]:
    """Split ``cases`` into (kept, carved) with ``round(fraction * n)`` (at least 1 when fraction > 0) carved."""
    if fraction == 0.0:
        return list(cases), []
    n = len(cases)
    k = max(1, int(math.floor(fraction * n + 0.5)))
    if k >= n:
        raise DataError(
            f"cannot carve a {what} split of {fraction:g} from {n} case(s): nothing would be left to train on",
            fix=f"add cases or lower the {what} fraction",
        )
    order = rng.permutation(n)
    ordered = sorted(cases, key=lambda c: c.case_id)
    carved = {ordered[i].case_id for i in order[:k]}
    return [c for c in ordered if c.case_id not in carved], [c for c in ordered if c.case_id in carved]


def _check_input(cases_by_split: dict[str, list[Case]]) -> dict[str, Case]:
    keys = set(cases_by_split)
    if not keys or not keys <= {"all", *_SPLITS} or ("all" in keys and len(keys) > 1):
        raise ConfigError(
            f"cases_by_split has keys {sorted(keys)}; expected 'all' alone, or 'train' with optional 'val' and "
            "'test' (as the dataset adapters return them)"
        )
    if "all" not in keys and "train" not in keys:
        raise DataError(f"cases_by_split has no 'train' split (keys: {sorted(keys)})", fix="provide training cases")
    by_id: dict[str, Case] = {}
    for split, cases in cases_by_split.items():
        for case in cases:
            if case.case_id in by_id:
                raise DataError(
                    f"case id {case.case_id!r} appears twice ({by_id[case.case_id].image} and {case.image}, "
                    f"the second in split {split!r})",
                    fix="make case ids unique across splits",
                )
            by_id[case.case_id] = case
    if not by_id:
        raise DataError("cases_by_split holds no cases", fix="check the dataset root")
    return by_id


def _write_atomic(path: Path, payload: dict) -> None:
    write_text_atomic(json.dumps(payload, indent=1) + "\n", path)


def _load(
    path: Path, by_id: dict[str, Case], official_test: set[str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Case]]:
    fix = f"delete {path} to split again, or point to the dataset it was made for"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        stored = {s: [str(i) for i in payload["splits"][s]] for s in _SPLITS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"splits file {path} is unreadable or malformed ({exc})", fix=fix) from exc
    ids = [i for s in _SPLITS for i in stored[s]]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"splits file {path} lists case(s) {dup[:10]} in more than one split", fix=fix)
    gone = [i for i in ids if i not in by_id]
    if gone:
        raise DataError(
            f"splits file {path} names {len(gone)} case(s) that no longer exist in the dataset: "
            f"{', '.join(gone[:10])}{' ...' if len(gone) > 10 else ''}",
            fix=fix,
        )
    leaked = sorted(official_test & set(stored["train"] + stored["val"]))
    if leaked:
        raise DataError(f"splits file {path} puts official test case(s) {leaked[:10]} in train/val", fix=fix)
    unused = len(by_id) - len(ids)
    if unused:
        warnings.warn(f"{unused} case(s) of the dataset are not in {path} and are left out", UserWarning, 3)
    saved = (payload.get("seed"), payload.get("val_fraction"), payload.get("test_fraction"))
    if saved != (seed, val_fraction, test_fraction):
        warnings.warn(
            f"reusing {path} made with seed/val_fraction/test_fraction {saved}, not the requested "
            f"{(seed, val_fraction, test_fraction)}; delete it to split again",
            UserWarning,
            3,
        )
    return {s: [by_id[i] for i in stored[s]] for s in _SPLITS}


def resolve_splits(
    cases_by_split: dict[str, list[Case]],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    path: str | Path | None = None,
) -> dict[str, list[Case]]:
    """Complete a dataset's splits to train/val/test, seeded and reproducible (see the module rules).

    Args:
        cases_by_split: An adapter's result: ``{"all": [...]}`` or ``{"train": [...], ["val": ...],
            ["test": ...]}``.
        val_fraction: Share of the training cases (after any test carving) moved to val when there is no
            official val split; 0 leaves val empty.
        test_fraction: Share of all cases moved to test when there is no official test split; 0 leaves test empty.
        seed: Seed of the permutation used for carving.
        path: ``splits.json`` to write, or to reuse verbatim when it exists already.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; carved splits are sorted by ``case_id``.

    Raises:
        ConfigError: bad split keys or fractions.
        DataError: duplicate case ids, too few cases to carve, or a ``splits.json`` that is malformed, names
            missing cases or leaks official test cases into train/val.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    by_id = _check_input(cases_by_split)
    official_test = {c.case_id for c in cases_by_split.get("test", [])}
    path = None if path is None else Path(path)
    if path is not None and path.exists():
        return _load(path, by_id, official_test, seed, val_fraction, test_fraction)

    rng = np.random.default_rng(seed)
    train = list(cases_by_split.get("train", cases_by_split.get("all", [])))
    if "test" in cases_by_split:
        test = list(cases_by_split["test"])
    else:
        train, test = _carve(train, test_fraction, rng, "test")
    if "val" in cases_by_split:
        val = list(cases_by_split["val"])
    else:
        train, val = _carve(train, val_fraction, rng, "val")
    result = {"train": train, "val": val, "test": test}
    if path is not None:
        payload = {
            "format": SPLITS_FORMAT,
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "official": sorted(k for k in cases_by_split if k in ("val", "test")),
            "splits": {s: [c.case_id for c in result[s]] for s in _SPLITS},
        }
        _write_atomic(path, payload)
    return result


_FOLD_SEED_MAX = 2**32 - 1  # the seed range of NumPy's RandomState, which partition_dataset shuffles with


def _deal_folds(cases: list[Case], folds: int, seed: int) -> list[list[Case]]:
    """``cases`` (sorted by id) shuffled with ``seed`` and dealt round-robin into ``folds`` parts, each sorted by id.

    MONAI's ``partition_dataset`` (``np.random.RandomState(seed).shuffle``, then every ``folds``-th case): the
    parts partition ``cases`` and their sizes differ by at most one.
    """
    parts = partition_dataset(cases, num_partitions=folds, shuffle=True, seed=int(seed), even_divisible=False)
    return [sorted(part, key=lambda c: c.case_id) for part in parts]


def cross_validation_splits(
    cases_by_split: dict[str, list[Case]],
    *,
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    path: str | Path | None = None,
) -> dict[str, list[Case]]:
    """k-fold cross-validation over the training cases (nnU-Net style): fold ``fold`` is validation.

    The training cases (``"train"`` or ``"all"``) are sorted by id, shuffled with ``seed`` and dealt into
    ``folds`` parts by MONAI's ``partition_dataset`` (see :func:`_deal_folds`); an official ``"test"`` split stays
    the test split (empty otherwise). The result, with the fold layout, is written to ``path`` atomically and
    reused verbatim when that file exists.

    Raises:
        ConfigError: ``folds < 2``, ``fold`` outside ``0..folds-1`` or ``seed`` outside ``0..2**32-1``.
        DataError: fewer training cases than folds, or a ``splits.json`` of another fold or naming missing cases.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an int >= 2, got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"fold must be an int in 0..{folds - 1} (for {folds}-fold cross-validation), got {fold!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _FOLD_SEED_MAX:
        raise ConfigError(f"the cross-validation seed (data.split_seed) must be an int in 0..{_FOLD_SEED_MAX}, "
                          f"got {seed!r}")
    by_id = _check_input(cases_by_split)
    path = None if path is None else Path(path)
    if path is not None and path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path} is not a readable splits file ({exc}); delete it to re-create the splits") from exc
        if stored.get("fold") != fold or stored.get("folds") != folds:
            raise DataError(
                f"{path} holds fold {stored.get('fold')} of {stored.get('folds')}, not fold {fold} of {folds}; use "
                "another run directory for another fold"
            )
        missing = [i for s in _SPLITS for i in stored["splits"].get(s, []) if i not in by_id]
        if missing:
            raise DataError(f"{path} names cases that no longer exist: {missing[:10]}; restore them or start a new run")
        return {s: [by_id[i] for i in stored["splits"].get(s, [])] for s in _SPLITS}
    train = sorted(cases_by_split.get("train", cases_by_split.get("all", [])), key=lambda c: c.case_id)
    if len(train) < folds:
        raise DataError(f"{len(train)} training case(s) cannot be dealt into {folds} folds; lower the number of folds")
    parts = _deal_folds(train, folds, seed)
    result = {
        "train": sorted((c for k, part in enumerate(parts) if k != fold for c in part), key=lambda c: c.case_id),
        "val": parts[fold],
        "test": list(cases_by_split.get("test", [])),
    }
    if path is not None:
        _write_atomic(path, {
            "format": SPLITS_FORMAT, "seed": int(seed), "folds": folds, "fold": fold,
            "all_folds": [[c.case_id for c in part] for part in parts],
            "splits": {s: [c.case_id for c in result[s]] for s in _SPLITS},
        })
    return result


def nested_subset(cases: list[Case], fraction: float, seed: int) -> list[Case]:
    """A seeded subset of ``fraction`` of ``cases`` (training-data experiments), nested across fractions.

    The cases are sorted by ``case_id`` and permuted by ``seed``; the subset is the first ``round(fraction * n)``
    (at least 1) of that order, returned sorted by ``case_id``. With the same ``seed`` a smaller fraction is
    therefore always contained in a larger one (25% inside 50% inside 100%), and the result does not depend on
    the order in which the cases were listed.

    Args:
        cases: the training cases (``n >= 1``).
        fraction: in (0, 1]; 1 returns every case.
        seed: the permutation's seed (an int >= 0).

    Raises:
        ConfigError: ``fraction`` outside (0, 1] or a bad seed; DataError: no cases.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data.train_fraction must be a number in (0, 1], got {fraction!r}; e.g. 0.25 for a quarter "
                          "of the training cases.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"the subset seed must be an int >= 0, got {seed!r}.")
    if not cases:
        raise DataError("there are no training cases to take a subset of", fix="check the dataset root")
    ordered = sorted(cases, key=lambda c: c.case_id)
    if fraction == 1.0:
        return ordered
    k = max(1, int(math.floor(fraction * len(ordered) + 0.5)))
    order = np.random.default_rng(seed).permutation(len(ordered))
    keep = {ordered[i].case_id for i in order[:k]}
    return [c for c in ordered if c.case_id in keep]
