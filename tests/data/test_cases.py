from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dragsaw.data.cases import Case
from dragsaw.errors import DataError


def test_paths_are_normalised_and_case_is_frozen_and_hashable():
    case = Case("a", "x/a.png", "y/a.png")
    assert case.image == Path("x/a.png") and case.mask == Path("y/a.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.case_id = "b"  # type: ignore[misc]
    assert len({case, Case("a", Path("x/a.png"), Path("y/a.png"))}) == 1


def test_mask_files_single_negative_and_merged():
    assert Case("a", "a.png", "m.png").mask_files() == (Path("m.png"),)
    neg = Case("n", "n.png", None)
    assert neg.mask_files() == () and neg.is_negative
    merged = Case("c", "c.png", "l.png", {"masks": ("l.png", "r.png")})
    assert merged.mask_files() == (Path("l.png"), Path("r.png")) and not merged.is_negative


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_case_id_names_the_image(bad):
    with pytest.raises(DataError, match="img.png"):
        Case(bad, "img.png", None)  # type: ignore[arg-type]
