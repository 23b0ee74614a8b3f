"""Dataset verification against the bad-input corpus, the summary counts, quick mode and the exit-code rule."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from dragsaw.data.verify import checks as verify
from dragsaw.data.cases import Case
from dragsaw.data.verify import Problem, VerifyReport, verify_cases, verify_dataset
from dragsaw.errors import ConfigError, DataError

from _corpus import CORPUS, BadInput, clean_folder, mask, pair, rgb, save

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def run(entry: BadInput, tmp_path: Path, quick: bool = False) -> VerifyReport:
    built = entry.build(tmp_path)
    if built.root is not None:
        return verify_dataset("folder", built.root, num_classes=entry.num_classes, quick=quick, **entry.options)
    return verify_cases(built.cases, num_classes=entry.num_classes, quick=quick)


def hits(report: VerifyReport, entry: BadInput, words: tuple[str, ...]) -> list[Problem]:
    """Findings at the entry's level whose line contains the file name and ``words``."""
    return [p for p in report.of_level(entry.level) if all(w in p.line() for w in (entry.substring, *words))]


def test_corpus_is_large_and_unique():
    names = [e.name for e in CORPUS]
    assert len(names) == len(set(names))
    assert sum(e.level != "ok" for e in CORPUS) >= 15
    assert {e.level for e in CORPUS} == {"ok", "info", "warning", "error"}


@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.name)
def test_corpus_full_check(entry: BadInput, tmp_path):
    report = run(entry, tmp_path)
    assert report.worst == entry.level, report.format(None)
    if entry.level == "ok":
        assert report.problems == []
    else:
        assert hits(report, entry, entry.also), report.format(None)
    assert report.exit_code(strict=False) == (2 if entry.level == "error" else 0)
    assert report.exit_code(strict=True) == {"error": 2, "warning": 1}.get(entry.level, 0)
    for p in report.problems:  # every finding is complete and printable on one line per problem
        assert p.file and p.what and p.fix and p.line().startswith(p.level.upper() + " ")
        assert p.line() in report.format(None)


@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.name)
def test_corpus_headers_only(entry: BadInput, tmp_path, monkeypatch):
    """With an empty sample, quick mode sees exactly the header-level problems."""
    monkeypatch.setattr(verify, "QUICK_SAMPLE", 0)
    report = run(entry, tmp_path, quick=True)
    assert report.counts["check"] == "quick"
    if entry.level == "ok":
        assert report.problems == [] and report.counts.get("decoded_cases", 0) == 0
    elif entry.header:
        assert report.worst == entry.level and hits(report, entry, ()), report.format(None)
    else:
        assert not hits(report, entry, entry.also), report.format(None)
        assert report.counts["decoded_cases"] == 0


def _all_bad_masks(root: Path, n: int) -> None:
    for i in range(n):
        m = mask(fg=1)
        m[0, 0] = 2
        pair(root, f"c{i:02d}", seed=i, msk=m)


def test_quick_decodes_a_seeded_sample_of_eight(tmp_path):
    _all_bad_masks(tmp_path, 20)

    def bad_files(**kwargs) -> list[str]:
        report = verify_dataset("folder", tmp_path, num_classes=2, **kwargs)
        assert report.counts["images_read"] == 20 and report.counts["decoded_cases"] == 0
        return sorted(p.file for p in report.problems if p.kind == "mask_values")

    full = bad_files()
    assert len(full) == 20
    sample = bad_files(quick=True)
    assert len(sample) == verify.QUICK_SAMPLE == 8 and set(sample) <= set(full)
    assert bad_files(quick=True) == sample  # seeded: the same sample again
    assert bad_files(quick=True, seed=1) != sample


def test_quick_on_a_small_dataset_decodes_everything(tmp_path):
    _all_bad_masks(tmp_path, 5)
    report = verify_dataset("folder", tmp_path, num_classes=2, quick=True)
    assert len(report.of_level("error")) == 5


def test_clean_summary_counted_by_hand(tmp_path):
    for i in range(3):
        pair(tmp_path / "train", f"big{i}", seed=i)  # 8x10
    pair(tmp_path / "train", "blank", seed=10, msk=np.zeros((8, 10), np.uint8))
    pair(tmp_path / "train", "small", seed=11, image=rgb(11, 6, 4), msk=mask(6, 4))
    for i in range(2):
        pair(tmp_path / "test", f"t{i}", seed=20 + i, image=rgb(20 + i, 6, 4), msk=mask(6, 4))
    report = verify_dataset("folder", tmp_path, num_classes=2)
    assert report.counts == {
        "check": "full",
        "cases": {"train": 5, "test": 2},
        "images": 7, "images_read": 7, "masks": 7, "masks_read": 7,
        "decoded_cases": 7,
        "channels": {3: 7},
        "sizes": {"8x10": 4, "6x4": 3},
        "empty_masks": 1,
        "negative_cases": 0,
    }  # fmt: skip
    assert [p.kind for p in report.problems] == ["empty_mask"] and "blank.png" in report.problems[0].file
    assert report.exit_code(strict=True) == 0
    text = report.format()
    for line in ["train         5", "test          2", "total         7", "channels: 3 (7 images)",
                 "sizes: 8x10 (4 images), 6x4 (3 images)", "images read: 7 of 7; masks read: 7 of 7; cases decoded: 7",
                 "empty masks: 1 of 7 decoded cases", "problems: 0 error(s), 0 warning(s), 1 info"]:
        assert line in text.splitlines() or any(l.startswith(line) for l in text.splitlines()), (line, text)


def test_unreadable_files_are_not_counted_as_read(tmp_path):
    clean_folder(tmp_path, 3)
    (tmp_path / "images" / "ok001.png").write_bytes(b"")
    save(tmp_path / "masks" / "ok002.png", np.full((8, 10), 7, np.uint8))
    report = verify_dataset("folder", tmp_path, num_classes=2)
    c = report.counts
    assert (c["images"], c["images_read"], c["masks"], c["masks_read"], c["decoded_cases"]) == (3, 2, 3, 2, 1)
    assert len(report.of_level("error")) == 2


def test_duplicates_of_equal_size_and_equal_ends(tmp_path):
    """Uncompressed BMPs of one size share their length (and here their first and last 64 KiB): only the whole
    content decides."""
    base = rgb(1, 300, 300)  # 264 KiB of pixels: the middle rows lie outside both 64 KiB ends
    other = base.copy()
    other[150, 150] ^= 1
    for stem, arr in (("a", base), ("b", other), ("c", base)):
        pair(tmp_path, stem, image=arr, msk=mask(300, 300), image_name=f"{stem}.bmp")
    sizes = {p.stat().st_size for p in (tmp_path / "images").iterdir()}
    assert len(sizes) == 1
    report = verify_dataset("folder", tmp_path, num_classes=2, quick=True)
    assert [(Path(p.file).name, p.kind) for p in report.problems] == [("c.bmp", "dup_content")], report.format()
    assert "a.bmp" in report.problems[0].what


def test_quick_timing_is_printed(tmp_path):
    clean_folder(tmp_path, 100)
    start = time.perf_counter()
    report = verify_dataset("folder", tmp_path, num_classes=2, quick=True)
    elapsed = time.perf_counter() - start
    print(f"quick verification of 100 cases (8x10 RGB PNG): {elapsed * 1000:.1f} ms")
    assert report.counts["decoded_cases"] == 8 and report.exit_code(True) == 0


def test_exit_code_rule():
    def rep(*levels: str) -> VerifyReport:
        return VerifyReport([Problem(lvl, "f", "w", "x") for lvl in levels], {})

    table = {(): (0, 0), ("info",): (0, 0), ("warning",): (0, 1), ("warning", "info"): (0, 1),
             ("error",): (2, 2), ("info", "warning", "error"): (2, 2)}
    for levels, (plain, strict) in table.items():
        assert (rep(*levels).exit_code(False), rep(*levels).exit_code(True)) == (plain, strict), levels
    assert rep("info", "warning").worst == "warning" and rep().worst == "ok"


def test_problem_level_checked_and_messages_split():
    with pytest.raises(ValueError, match="level"):
        Problem("fatal", "f", "w", "x")
    p = Problem.from_error("error", "a.png", DataError("a.png is bad; detail", fix="redo it"), "k")
    assert (p.what, p.fix) == ("a.png is bad; detail", "redo it")
    assert p.line() == "ERROR a.png: a.png is bad; detail -- redo it"
    # the fields are read, not parsed back from the text: a positional message stays whole
    p = Problem.from_error("error", "a.png", DataError("a.png is bad; fix: redo it"), "k")
    assert (p.what, p.fix) == ("a.png is bad; fix: redo it", "see the message")
    assert Problem.from_error("warning", "b", ValueError("odd"), "k").what == "odd"


def test_format_collapses_long_groups():
    report = VerifyReport([Problem("info", f"m{i}.png", "empty mask", "none", "empty_mask") for i in range(25)],
                          {"cases": {"all": 25}})
    short = report.format(max_per_kind=20)
    assert sum(l.startswith("INFO m") for l in short.splitlines()) == 20
    assert "INFO ... 5 more 'empty_mask' problem(s) not shown" in short
    assert sum(l.startswith("INFO m") for l in report.format(None).splitlines()) == 25


def test_bad_arguments_raise_config_error(tmp_path):
    clean_folder(tmp_path)
    with pytest.raises(ConfigError, match="Did you mean 'folder'"):
        verify_dataset("foldr", tmp_path, num_classes=2)
    with pytest.raises(ConfigError, match="num_classes"):
        verify_dataset("folder", tmp_path, num_classes=1)
    with pytest.raises(ConfigError, match="value_map"):
        verify_cases({"all": []}, num_classes=2, value_map={0: 0, 255: 5})
    with pytest.raises(ConfigError, match="cases_by_split"):
        verify_cases({"all": ["a.png"]}, num_classes=2)
    assert verify_cases({"all": []}, num_classes=2).exit_code(False) == 2  # no cases: an error finding


def test_value_map_is_applied(tmp_path):
    for i in range(2):
        pair(tmp_path, f"c{i}", seed=i, msk=np.tile(np.array([0, 128, 255, 0, 0], np.uint8), (8, 2)))
    unmapped = verify_dataset("folder", tmp_path, num_classes=3)
    assert unmapped.exit_code(False) == 2 and all("{128, 255}" in p.what for p in unmapped.problems)
    mapped = verify_dataset("folder", tmp_path, num_classes=3, value_map={0: 0, 128: 1, 255: 2})
    assert mapped.exit_code(True) == 0, mapped.format()


def test_merged_masks_and_missing_files(tmp_path):
    img, msk = pair(tmp_path, "a", msk=mask(fg=1))
    other = save(tmp_path / "m2.png", mask(fg=2))  # the same pixels, another class
    merged = Case("m", img, msk, {"masks": (msk, other)})
    report = verify_cases({"all": [merged]}, num_classes=3)
    assert [p.kind for p in report.problems] == ["mask_clash"] and "m2.png" in report.problems[0].file
    gone = Case("g", tmp_path / "nope.png", tmp_path / "nope_mask.png")
    report = verify_cases({"all": [gone]}, num_classes=2)
    assert {p.file for p in report.of_level("error")} == {str(gone.image), str(gone.mask)}
    assert all("does not exist" in p.what for p in report.problems)


def test_no_warning_leaks(tmp_path):
    entries = {e.name: e for e in CORPUS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("letter_case_pair", "jpeg_mask_halo"):
            assert run(entries[name], tmp_path / name).worst == "warning"


def test_decathlon_task_and_channel_counts(tmp_path):
    decathlon = pytest.importorskip("dragsaw.data.adapters.decathlon").decathlon
    write_decathlon = pytest.importorskip("dragsaw.data.synthetic.volumes").write_decathlon
    root = write_decathlon(tmp_path / "Task99", n_train=3, n_test=0, shape=(16, 16, 16), num_classes=3, modalities=2)
    report = verify_cases(decathlon(root), num_classes=3)
    assert report.exit_code(True) == 0, report.format()
    c = report.counts
    assert (c["cases"], c["channels"], c["sizes"], c["decoded_cases"]) == ({"train": 3}, {2: 3}, {"16x16x16": 3}, 3)
    quick = verify_cases(decathlon(root), num_classes=2, quick=True)  # 3 classes stored, 2 declared
    assert quick.exit_code(False) == 2 and all("not accounted for" in p.what for p in quick.problems)


def test_channel_files_are_counted(tmp_path):
    entry = next(e for e in CORPUS if e.name == "channel_files_clean")
    report = run(entry, tmp_path)
    assert report.counts["channels"] == {2: 3} and report.counts["images"] == 6 and report.counts["masks"] == 3


@pytest.mark.shared_data
def test_shared_data_verifies_clean():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    lungs = verify_dataset("montgomery", SHARED / "montgomery-512", num_classes=2, quick=True)
    assert lungs.exit_code(True) == 0, lungs.format()
    assert lungs.counts["cases"] == {"all": 138} and lungs.counts["channels"] == {1: 138}
    assert lungs.counts["sizes"] == {"512x512": 138}
    isic = verify_dataset("isic2016", SHARED / "isic2016-sample", num_classes=2)
    assert isic.exit_code(True) == 0, isic.format()
    assert isic.counts["cases"] == {"train": 6, "test": 6} and isic.counts["decoded_cases"] == 12
    assert sum(isic.counts["sizes"].values()) == 12 and isic.counts["sizes"].get("1129x1504") == 1
