"""The README's main job in its smoke form: synthetic data, two variants with one seed, a report."""

from __future__ import annotations

import json
import re

import pytest

from dragsaw.cli import main

pytestmark = pytest.mark.slow  # two tiny training runs and a report


def test_quick_demo_writes_a_comparable_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if "±" in line}
    assert set(rows) == {"baseline", "+PDCR+UAFS"}
    for variant, run in (("baseline", "run-baseline"), ("+PDCR+UAFS", "run-pdcr-uafs")):
        metrics = json.loads((out / run / "metrics.json").read_text())
        dice = metrics["test"]["mean"]["dice_fg"]["mean"]
        assert f"{dice:.4f}" in rows[variant]  # the table shows the run's own numbers
        assert metrics["seed"] == 0
    for image in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (out / image).is_file()
    assert "report:" in capsys.readouterr().out
    assert main(["demo", "--quick", "--out", str(out)]) == 2  # never overwrites an earlier demo
