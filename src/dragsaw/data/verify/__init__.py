"""Dataset verification: every problem of a dataset as a list of findings, before any training starts.

:mod:`~dragsaw.data.verify.checks` holds the public entry points, :mod:`~dragsaw.data.verify.files` the per-file
scanner and :mod:`~dragsaw.data.verify.problems` the findings and the report.
"""

from __future__ import annotations

from dragsaw.data.verify.checks import QUICK_SAMPLE, verify_cases, verify_dataset
from dragsaw.data.verify.problems import LEVELS, Level, Problem, VerifyReport

__all__ = ["LEVELS", "Level", "Problem", "QUICK_SAMPLE", "VerifyReport", "verify_cases", "verify_dataset"]
