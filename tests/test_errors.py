"""The structured user-facing errors (what / where / fix, rendered once), the argument checks and the one
"did you mean" helper."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dragsaw._checks import SUPPORTED_DIMS, check_spatial_dims, did_you_mean
from dragsaw.data.verify.problems import Problem
from dragsaw.errors import ConfigError, DataError, DiskFullError, DragsawError, InterruptedRun


@pytest.mark.parametrize(
    "where,fix,text",
    [
        (None, None, "mask has 3 channels"),
        ("a/m.png", None, "a/m.png: mask has 3 channels"),
        (None, "save it as grayscale", "mask has 3 channels; fix: save it as grayscale"),
        ("a/m.png", "save it as grayscale", "a/m.png: mask has 3 channels; fix: save it as grayscale"),
    ],
)
def test_render_leaves_out_the_missing_parts(where, fix, text):
    err = DataError("mask has 3 channels", where=where, fix=fix)
    assert str(err) == err.render() == text
    assert (err.what, err.where, err.fix) == ("mask has 3 channels", where, fix)
    assert err.args == (text,)


def test_where_takes_a_path_and_is_stored_as_str():
    err = ConfigError("bad value", where=Path("runs") / "config.json", fix="edit it")
    assert err.where == str(Path("runs") / "config.json") and isinstance(err.where, str)
    assert str(err) == f"{Path('runs') / 'config.json'}: bad value; fix: edit it"


def test_a_positional_message_is_the_what():
    err = DataError("x.png is empty; fix: re-export it")
    assert str(err) == "x.png is empty; fix: re-export it"
    assert (err.what, err.where, err.fix) == ("x.png is empty; fix: re-export it", None, None)
    assert isinstance(err, ValueError) and isinstance(ConfigError("c"), ValueError)
    with pytest.raises(TypeError):
        DataError("what", "where")  # where and fix are keyword-only


def test_interrupted_run_keeps_its_signature():
    err = InterruptedRun("stopped; resume with --resume", 130)
    assert (str(err), err.code, err.what, err.where, err.fix) == (
        "stopped; resume with --resume", 130, "stopped; resume with --resume", None, None
    )


@pytest.mark.parametrize(
    "err",
    [
        DataError("only what"),
        DataError("what", where="/data/a.nii.gz", fix="re-export it"),
        ConfigError("what", fix="pick another"),
        DiskFullError("disk full", where="/runs"),
        InterruptedRun("stopped", 143),
    ],
    ids=["what", "all", "config-fix", "disk-where", "interrupted"],
)
def test_pickling_keeps_the_fields(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (str(back), back.what, back.where, back.fix) == (str(err), err.what, err.where, err.fix)
    assert back.args == err.args
    if isinstance(err, InterruptedRun):
        assert back.code == 143


class _Failed(DragsawError):
    """A subclass whose own __init__ takes other arguments (as the command line's does)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, fix="run it again")
        self.code = code


def test_pickling_a_subclass_with_its_own_init():
    back = pickle.loads(pickle.dumps(_Failed(3, "check failed")))
    assert (type(back), back.code, str(back)) == (_Failed, 3, "check failed; fix: run it again")
    assert (back.what, back.where, back.fix) == ("check failed", None, "run it again")


def test_problem_from_error_reads_the_fields():
    exc = DataError("mask file m.png has 3 channels", fix="save it as grayscale")
    p = Problem.from_error("error", "m.png", exc, "mode", prefix="RGB mask: ")
    assert p.line() == "ERROR m.png: RGB mask: mask file m.png has 3 channels -- save it as grayscale"
    # a where that is the file itself is not repeated; another one is kept in front of the what
    same = Problem.from_error("error", "m.png", DataError("bad", where="m.png", fix="redo"), "k")
    assert (same.what, same.fix) == ("bad", "redo")
    other = Problem.from_error("error", "root", DataError("bad", where="root/dataset.json", fix="redo"), "k")
    assert (other.what, other.fix) == ("root/dataset.json: bad", "redo")
    no_fix = Problem.from_error("warning", "m.png", DataError("odd"), "k")
    assert (no_fix.what, no_fix.fix) == ("odd", "see the message")


def test_problem_from_a_non_dragsaw_error():
    p = Problem.from_error("error", "x.png", OSError("disk gone; fix: nothing"), "unreadable")
    assert (p.file, p.what, p.fix, p.kind) == ("x.png", "disk gone; fix: nothing", "see the message", "unreadable")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_check_spatial_dims_core_set(dims):
    assert check_spatial_dims(dims) == dims


@pytest.mark.parametrize("bad", [0, 4, True, 2.0, "2", None])
def test_check_spatial_dims_core_set_rejects(bad):
    with pytest.raises(ValueError) as info:
        check_spatial_dims(bad)
    assert str(info.value) == f"spatial_dims must be 1, 2 or 3, got {bad!r}."


def test_check_spatial_dims_model_set():
    assert SUPPORTED_DIMS == (2, 3)
    assert [check_spatial_dims(d, SUPPORTED_DIMS) for d in (2, 3)] == [2, 3]
    for bad in (1, 4):
        with pytest.raises(ConfigError) as info:
            check_spatial_dims(bad, SUPPORTED_DIMS)
        assert str(info.value) == f"spatial_dims must be 2 or 3, got {bad}."
    with pytest.raises(ConfigError, match=r"^spatial_dims must be 3, got 2\.$"):
        check_spatial_dims(2, supported=(3,))


def test_did_you_mean():
    assert did_you_mean("xceptoin", ["resnet50", "xception"]) == " Did you mean 'xception'?"
    assert did_you_mean("batch_nrom", ("batch", "instance", "batch_norm")) == " Did you mean 'batch_norm'?"
    assert did_you_mean("zzz", ["resnet50", "xception"]) == ""
    assert did_you_mean(3, {"3d": 1, "2d": 2}) == " Did you mean '3d'?"  # any value; a mapping's keys
    assert did_you_mean("anything", []) == ""
