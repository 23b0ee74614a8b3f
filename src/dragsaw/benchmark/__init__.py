"""``dragsaw benchmark``: many training runs on one dataset, their statistics and their report.

:mod:`.harness` plans and runs variants x training fractions x seeds x grid points (resumable); :mod:`.stats` holds
the statistics (confidence intervals over seeds, Wilcoxon signed-rank, paired bootstrap, Holm); :mod:`.report`
turns ``runs.csv``/``results.csv`` into ``report.md`` and plots.
"""

from .harness import BUILTIN_VARIANTS, BenchmarkPlan, Variant, parse_grid, parse_variants, run_benchmark, smoke_plan
from .report import write_benchmark_report

__all__ = ["BUILTIN_VARIANTS", "BenchmarkPlan", "Variant", "parse_grid", "parse_variants", "run_benchmark",
           "smoke_plan", "write_benchmark_report"]
