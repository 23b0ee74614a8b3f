from __future__ import annotations

import json
from pathlib import Path
import random

import numpy as np
import pytest

from dragsaw.data.cases import Case
from dragsaw.data.splits import resolve_splits
from dragsaw.errors import ConfigError, DataError


def cases(prefix: str, n: int) -> list[Case]:
    return [Case(f"{prefix}{i:03d}", f"{prefix}{i}.png", f"{prefix}{i}_m.png") for i in range(n)]


def ids(split) -> list[str]:
    return [c.case_id for c in split]


def reference_carve(id_list, fraction, rng):
    """The documented rule, written independently: sort ids, permute with the seeded rng, take round(f*n)."""
    ordered = sorted(id_list)
    k = max(1, int(np.floor(fraction * len(ordered) + 0.5)))
    picked = {ordered[i] for i in rng.permutation(len(ordered))[:k]}
    return [i for i in ordered if i not in picked], sorted(picked)


def test_all_split_carves_test_then_val_like_the_reference():
    pool = cases("c", 20)
    out = resolve_splits({"all": pool}, val_fraction=0.2, test_fraction=0.2, seed=7)
    rng = np.random.default_rng(7)
    rest, test = reference_carve(ids(pool), 0.2, rng)
    train, val = reference_carve(rest, 0.2, rng)
    assert ids(out["test"]) == test and ids(out["val"]) == val and ids(out["train"]) == train
    assert (len(out["train"]), len(out["val"]), len(out["test"])) == (13, 3, 4)


def test_seeded_determinism_independent_of_listing_order():
    pool = cases("c", 30)
    shuffled = pool[:]
    random.Random(1).shuffle(shuffled)
    a = resolve_splits({"all": pool}, seed=3)
    b = resolve_splits({"all": shuffled}, seed=3)
    assert {k: ids(v) for k, v in a.items()} == {k: ids(v) for k, v in b.items()}
    c = resolve_splits({"all": pool}, seed=4)
    assert ids(c["test"]) != ids(a["test"])
    assert sorted(ids(a["train"]) + ids(a["val"]) + ids(a["test"])) == ids(pool)


def test_official_test_is_kept_and_val_comes_from_train_only():
    train, test = cases("t", 10), cases("s", 5)
    out = resolve_splits({"train": train, "test": test}, val_fraction=0.3, seed=0)
    assert ids(out["test"]) == ids(test)
    assert set(ids(out["val"])) <= set(ids(train)) and len(out["val"]) == 3
    assert not set(ids(out["train"]) + ids(out["val"])) & set(ids(test))
    assert sorted(ids(out["train"]) + ids(out["val"])) == ids(train)


def test_official_val_and_test_are_used_verbatim():
    given = {"train": cases("t", 4), "val": cases("v", 2), "test": cases("s", 3)}
    out = resolve_splits(given, seed=9)
    assert {k: ids(v) for k, v in out.items()} == {k: ids(v) for k, v in given.items()}


def test_train_only_gets_a_test_split_too():
    out = resolve_splits({"train": cases("t", 10)}, test_fraction=0.3, val_fraction=0.5)
    assert (len(out["test"]), len(out["val"]), len(out["train"])) == (3, 4, 3)


def test_zero_fraction_leaves_split_empty():
    out = resolve_splits({"train": cases("t", 5), "test": cases("s", 1)}, val_fraction=0.0)
    assert out["val"] == [] and len(out["train"]) == 5


def test_written_file_and_reuse(tmp_path):
    path = tmp_path / "run" / "splits.json"
    pool = cases("c", 10)
    first = resolve_splits({"all": pool}, seed=1, path=path)
    payload = json.loads(path.read_text())
    assert payload["seed"] == 1 and payload["val_fraction"] == 0.2 and payload["test_fraction"] == 0.2
    assert payload["splits"] == {k: ids(v) for k, v in first.items()}
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left
    with pytest.warns(UserWarning, match="reusing"):
        again = resolve_splits({"all": pool}, seed=2, path=path)
    assert {k: ids(v) for k, v in again.items()} == payload["splits"]
    assert again["train"][0] is next(c for c in pool if c.case_id == payload["splits"]["train"][0])


def test_reuse_with_missing_cases_or_broken_file(tmp_path):
    path = tmp_path / "splits.json"
    resolve_splits({"all": cases("c", 10)}, path=path)
    with pytest.raises(DataError, match="no longer exist") as info:
        resolve_splits({"all": cases("c", 8)}, path=path)
    assert str(path) in str(info.value) and "delete" in str(info.value)
    with pytest.warns(UserWarning, match="left out"):
        out = resolve_splits({"all": cases("c", 12)}, path=path)
    assert sum(len(v) for v in out.values()) == 10
    path.write_text("{not json")
    with pytest.raises(DataError, match="malformed"):
        resolve_splits({"all": cases("c", 10)}, path=path)


def test_reuse_refuses_official_test_cases_in_training(tmp_path):
    path = tmp_path / "splits.json"
    train, test = cases("t", 6), cases("s", 2)
    resolve_splits({"train": train, "test": test}, path=path, seed=0)
    payload = json.loads(path.read_text())
    payload["splits"] = {"train": ["s000", "t000"], "val": ["t001"], "test": ["s001"]}
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="official test case"):
        resolve_splits({"train": train, "test": test}, path=path)


@pytest.mark.parametrize(
    ("given", "kwargs", "error", "match"),
    [
        ({"all": cases("c", 3), "test": cases("s", 1)}, {}, ConfigError, "keys"),
        ({"training": cases("c", 3)}, {}, ConfigError, "keys"),
        ({"val": cases("v", 3)}, {}, DataError, "no 'train'"),
        ({"all": cases("c", 3)}, {"val_fraction": 1.0}, ConfigError, "val_fraction"),
        ({"all": cases("c", 3)}, {"test_fraction": -0.1}, ConfigError, "test_fraction"),
        ({"all": cases("c", 3)}, {"seed": 1.5}, ConfigError, "seed"),
        ({"all": cases("c", 1)}, {}, DataError, "nothing would be left"),
        ({"train": cases("c", 3), "test": cases("c", 1)}, {}, DataError, "appears twice"),
        ({"all": []}, {}, DataError, "no cases"),
    ],
)
def test_bad_inputs(given, kwargs, error, match):
    with pytest.raises(error, match=match):
        resolve_splits(given, **kwargs)


def _cases(n):
    from dragsaw.data import Case

    return [Case(f"c{i:02d}", Path(f"/x/c{i:02d}.nii.gz"), Path(f"/y/c{i:02d}.nii.gz")) for i in range(n)]


def test_cross_validation_folds_partition_the_training_cases(tmp_path):
    from dragsaw.data import cross_validation_splits

    cases = {"train": _cases(11), "test": _cases(13)[11:]}
    folds = [cross_validation_splits(cases, folds=5, fold=k, seed=3) for k in range(5)]
    vals = [sorted(c.case_id for c in f["val"]) for f in folds]
    assert sorted(i for v in vals for i in v) == [c.case_id for c in cases["train"]]  # each case validates once
    assert sorted(len(v) for v in vals) == [2, 2, 2, 2, 3]
    for f in folds:
        assert not {c.case_id for c in f["val"]} & {c.case_id for c in f["train"]}
        assert [c.case_id for c in f["test"]] == ["c11", "c12"]
    again = cross_validation_splits(cases, folds=5, fold=2, seed=3, path=tmp_path / "splits.json")
    assert sorted(c.case_id for c in again["val"]) == vals[2]
    reused = cross_validation_splits({"train": cases["train"][::-1], "test": cases["test"]}, folds=5, fold=2, seed=99,
                                     path=tmp_path / "splits.json")
    assert [c.case_id for c in reused["val"]] == [c.case_id for c in again["val"]]  # the file wins on resume
    with pytest.raises(DataError, match="holds fold 2 of 5, not fold 3 of 5"):
        cross_validation_splits(cases, folds=5, fold=3, seed=3, path=tmp_path / "splits.json")
    with pytest.raises(ConfigError, match="fold must be an int in 0..4"):
        cross_validation_splits(cases, folds=5, fold=5)
    with pytest.raises(DataError, match="cannot be dealt into 5 folds"):
        cross_validation_splits({"train": _cases(3)}, folds=5, fold=0)


@pytest.mark.parametrize("n,k", [(5, 5), (11, 5), (12, 3), (17, 4), (40, 10)])
def test_cross_validation_folds_are_seeded_and_balanced(n, k):
    from dragsaw.data import cross_validation_splits

    def layout(seed, listed=None):
        cases = {"all": listed if listed is not None else _cases(n)}
        return [tuple(c.case_id for c in cross_validation_splits(cases, folds=k, fold=f, seed=seed)["val"])
                for f in range(k)]

    folds = layout(7)
    assert sorted(i for part in folds for i in part) == [c.case_id for c in _cases(n)]  # exactly one val fold each
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert layout(7) == folds and layout(7, _cases(n)[::-1]) == folds  # seeded, whatever the listing order
    if n > k:  # with one case per fold only the fold numbers can change
        assert layout(8) != folds
    with pytest.raises(ConfigError, match=r"seed \(data.split_seed\) must be an int in 0..4294967295, got -1"):
        cross_validation_splits({"all": _cases(n)}, folds=k, fold=0, seed=-1)
