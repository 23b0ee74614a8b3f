"""Property: whatever a user writes into ``--set``, a preset file or a run's ``config.yaml``, ``dragsaw train``
ends with exit 0 or 2 (a refused input, one paragraph naming it), never 3 ("a bug") or a traceback, and a refused
new run leaves no run directory (a refused resume leaves the run as it was).

The runs stop before training: the data root does not exist, so a configuration that passes every check is refused
at the data check (exit 2). ``dragsaw.engine.train`` is wrapped to count the configurations that got that far.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dragsaw.config import _SECTIONS, RunConfig, apply_overrides, config_from_dict, load_preset
from dragsaw.engine.guard import LOCK_FILE
from dragsaw.engine.run import resume_config
from dragsaw.errors import ConfigError

from _cli import run_cli

FIELDS = {section: [f.name for f in dataclasses.fields(cls)] for section, cls in _SECTIONS.items()}
TOP = [f.name for f in dataclasses.fields(RunConfig)]
PATHS = {"data.root", "data.extra_root"}  # where the data is: kept missing, so no run ever trains
KEYS = sorted({f"{s}.{k}" for s, names in FIELDS.items() for k in names} - PATHS) + [
    "name", "description", "data", "train", "model.options.channels", "model.options.backbone", "pdcr.layers.x",
]
NAMES = [k for names in FIELDS.values() for k in names] + TOP
COUNT = {"set": 0, "preset": 0, "resume": 0, "reached_train": 0}
EXAMPLES = int(os.environ.get("DRAGSAW_PROPERTY_EXAMPLES", "0"))  # e.g. 2000: a longer, randomised search
PROPERTY = settings(max_examples=EXAMPLES or 150, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 600), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-9, 0.5, 1.0, 1e308]),
    st.text(max_size=10),
    st.sampled_from(["32-true", "16-mixed", "cpu", "gpu", "grid", "random", "mlp", "feature", "rf", "intended",
                     "encoder", "decoder", "unet", "folder", "decathlon", "auto"]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(NAMES) | st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)


def as_yaml(value) -> str:
    """``value`` as one line of YAML (flow style), as a user would type it after ``key=``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")


@st.composite
def documents(draw):
    """A small YAML document: usually a mapping of sections with schema keys (so that it gets past the first
    checks), sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    doc = {}
    for key in draw(st.lists(st.sampled_from([*TOP, "profiles", "extra"]), max_size=5, unique=True)):
        if key in FIELDS and draw(st.integers(0, 5)):
            doc[key] = draw(st.dictionaries(st.sampled_from(FIELDS[key] + ["nope"]), values, max_size=4))
        elif key == "profiles" and draw(st.booleans()):
            doc[key] = {"cpu": draw(st.dictionaries(st.sampled_from(list(FIELDS)), st.dictionaries(
                st.sampled_from(NAMES), values, max_size=3), max_size=2))}
        else:
            doc[key] = draw(values)
    return doc


def check(result, out: Path | None) -> None:
    """Exit 0 or 2; a refusal is one error paragraph without traceback; a refused new run leaves no directory."""
    assert result.code in (0, 2), result.err
    assert "Traceback" not in result.err and "unexpected" not in result.err, result.err
    if result.code == 2:
        assert result.err.startswith("dragsaw train: error: "), result.err
        if out is not None:
            assert not out.exists(), sorted(p.name for p in out.iterdir())


def attempt(fn, *args):
    """``fn(*args)`` may only return a RunConfig or raise ConfigError."""
    try:
        assert isinstance(fn(*args), RunConfig)
    except ConfigError:
        pass


@pytest.fixture
def counted_train(monkeypatch):
    """``dragsaw.engine.train`` wrapped to count the configurations that passed every configuration check."""
    import dragsaw.engine

    real = dragsaw.engine.train

    def wrapper(config, out, **kwargs):
        COUNT["reached_train"] += 1
        return real(config, out, **kwargs)

    monkeypatch.setattr(dragsaw.engine, "train", wrapper)


@pytest.mark.slow
@PROPERTY
@given(key=st.sampled_from(KEYS), value=values, raw=st.booleans(), text=st.text(max_size=12))
def test_any_set_value_is_exit_0_or_2(counted_train, key, value, raw, text):
    COUNT["set"] += 1
    item = f"{key}={text if raw else as_yaml(value)}"
    attempt(apply_overrides, load_preset("folder", "cpu"), [item])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = run_cli(["train", "--preset", "folder", "--profile", "cpu", "--data-root", str(Path(tmp) / "missing"),
                          "--out", str(out), "--quiet", "--set", item])
        check(result, out)


@pytest.mark.slow
@PROPERTY
@given(doc=documents(), profile=st.sampled_from([None, "cpu"]))
def test_any_preset_document_is_exit_0_or_2(counted_train, doc, profile):
    COUNT["preset"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        preset = Path(tmp) / "preset.yaml"
        preset.write_text(yaml.safe_dump(doc, allow_unicode=True))
        attempt(load_preset, str(preset), profile)
        out = Path(tmp) / "run"
        result = run_cli(["train", "--preset", str(preset), *(["--profile", profile] if profile else []),
                          "--data-root", str(Path(tmp) / "missing"), "--out", str(out), "--quiet"])
        check(result, out)


@pytest.mark.slow
@PROPERTY
@given(doc=documents(), overrides=st.lists(st.sampled_from(KEYS).map(lambda k: f"{k}=1"), max_size=1))
def test_any_config_yaml_is_exit_0_or_2_on_resume(counted_train, doc, overrides):
    COUNT["resume"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            doc["data"]["root"] = str(Path(tmp) / "missing")  # the data has gone: a valid config stops there
        (run / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        before = (run / "config.yaml").read_bytes()
        attempt(config_from_dict, doc)
        attempt(resume_config, run, overrides)
        result = run_cli(["train", "--resume", str(run), "--quiet", *[a for o in overrides for a in ("--set", o)]])
        check(result, None)
        assert {p.name for p in run.iterdir()} <= {"config.yaml", LOCK_FILE}  # nothing else was written
        assert (run / "config.yaml").read_bytes() == before


def test_zz_report_the_number_of_examples():
    """Runs after the properties (file order): how many cases they ran and how many passed every config check."""
    print(f"\nproperty examples: {COUNT}")
    assert COUNT["set"] == 0 or COUNT["set"] >= 30
