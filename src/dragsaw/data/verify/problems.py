"""Findings of a dataset check: one :class:`Problem` per file and what is wrong with it, collected in a
:class:`VerifyReport` that prints a summary and sets the exit code."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dragsaw.errors import DragsawError

__all__ = ["LEVELS", "Level", "Problem", "VerifyReport"]

Level = Literal["error", "warning", "info"]
LEVELS = ("error", "warning", "info")
"""Finding levels, worst first."""


@dataclass(frozen=True)
class Problem:
    """One finding about one file (or folder).

    Args:
        level: ``"error"`` (training would fail or learn from wrong data), ``"warning"`` (suspicious, usable) or
            ``"info"`` (worth knowing, fine).
        file: The file or folder concerned.
        what: What is wrong, with the offending values.
        fix: How to fix it.
        kind: Short tag grouping findings of one sort (``"unreadable"``, ``"empty_mask"``, ...).
    """

    level: Level
    file: str
    what: str
    fix: str
    kind: str = "other"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"Problem.level must be one of {LEVELS}, got {self.level!r}")

    @classmethod
    def from_error(cls, level: Level, file: Path | str, exc: Exception, kind: str, prefix: str = "") -> Problem:
        """A finding from an exception: a :class:`~dragsaw.errors.DragsawError` gives its ``what`` (after its
        ``where`` when that names something other than ``file``) and its ``fix`` (``"see the message"`` when it has
        none); any other exception gives its message and ``"see the message"``."""
        if isinstance(exc, DragsawError):
            what = exc.what if exc.where in (None, str(file)) else f"{exc.where}: {exc.what}"
            fix = exc.fix if exc.fix is not None else "see the message"
        else:
            what, fix = str(exc), "see the message"
        return cls(level, str(file), prefix + what, fix, kind)

    def line(self) -> str:
        """``LEVEL file: what -- fix``."""
        return f"{self.level.upper()} {self.file}: {self.what} -- {self.fix}"


@dataclass
class VerifyReport:
    """Findings and summary counts of one verification.

    Args:
        problems: The findings, in the order found.
        counts: ``check`` ("full"/"quick"), ``cases`` {split: n}, ``images``/``images_read``, ``masks``/``masks_read``
            (files, and those read without error), ``decoded_cases``, ``channels`` {C: images}, ``sizes``
            {"HxW" or "XxYxZ": images}, ``empty_masks`` (among decoded cases), ``negative_cases`` (no mask file).
    """

    problems: list[Problem] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def of_level(self, level: Level) -> list[Problem]:
        """The problems of one level."""
        return [p for p in self.problems if p.level == level]

    @property
    def worst(self) -> str:
        """``"error"``, ``"warning"``, ``"info"`` or ``"ok"`` (no finding at all)."""
        return next((lvl for lvl in LEVELS if self.of_level(lvl)), "ok")

    def exit_code(self, strict: bool = False) -> int:
        """2 with any error; 1 with warnings and ``strict``; else 0."""
        if self.of_level("error"):
            return 2
        return 1 if strict and self.of_level("warning") else 0

    def format(self, max_per_kind: int | None = 20) -> str:
        """Summary table, then one ``LEVEL file: what -- fix`` line per problem (errors first).

        Args:
            max_per_kind: Lines shown per (level, kind) before the rest are summarised in one line; None: all.
        """
        c = self.counts
        cases = c.get("cases", {})
        depth = "quick: headers + a sample decoded" if c.get("check") == "quick" else "full: every file decoded"
        out = [f"dataset check ({depth})", f"{'split':<8}{'cases':>7}"]
        out += [f"{s:<8}{n:>7}" for s, n in cases.items()] + [f"{'total':<8}{sum(cases.values()):>7}"]
        out.append(
            f"images read: {c.get('images_read', 0)} of {c.get('images', 0)}; masks read: {c.get('masks_read', 0)} "
            f"of {c.get('masks', 0)}; cases decoded: {c.get('decoded_cases', 0)}"
        )
        out.append("channels: " + _tally(c.get("channels", {}), "image"))
        out.append("sizes: " + _tally(c.get("sizes", {}), "image", limit=6))
        out.append(
            f"empty masks: {c.get('empty_masks', 0)} of {c.get('decoded_cases', 0)} decoded cases; "
            f"negative cases (no mask file): {c.get('negative_cases', 0)}"
        )
        n = {lvl: len(self.of_level(lvl)) for lvl in LEVELS}
        out.append(f"problems: {n['error']} error(s), {n['warning']} warning(s), {n['info']} info")
        for lvl in LEVELS:
            shown: Counter = Counter()
            group = self.of_level(lvl)
            for p in group:
                shown[p.kind] += 1
                if max_per_kind is None or shown[p.kind] <= max_per_kind:
                    out.append(p.line())
            for kind, total in shown.items():
                if max_per_kind is not None and total > max_per_kind:
                    out.append(f"{lvl.upper()} ... {total - max_per_kind} more {kind!r} problem(s) not shown")
        return "\n".join(out)


def _tally(counter: Mapping, noun: str, limit: int = 10) -> str:
    if not counter:
        return "none"
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{k} ({v} {noun}{'s' if v != 1 else ''})" for k, v in items[:limit])
    return text + (f", ... {len(items) - limit} more" if len(items) > limit else "")
