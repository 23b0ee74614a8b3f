"""Hosts of your own on the command line: ``--import MODULE``, the ``model.imports`` a run records (which evaluate
and predict import again in a fresh process), ``dragsaw.models`` entry points, and the messages when a module
cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from dragsaw import cli
from dragsaw.config import apply_overrides, load_preset
from dragsaw.errors import ConfigError
from dragsaw.models import create_model, registry

from _cli import gray_folder, run_cli, train_argv

SRC = Path(__file__).resolve().parents[1] / "src"

HOST = '''\
"""A small host of one's own: an encoder-decoder with declared PDCR taps and a UAFS point."""
import torch.nn.functional as F
from torch import nn

from dragsaw.models import HostNetwork, TapSpec, register_model


@register_model({name!r})
class SmallHost(HostNetwork):
    def __init__(self, spatial_dims=2, in_channels=1, num_classes=2, *, width=4):
        super().__init__(spatial_dims, in_channels, num_classes)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.width = width
        self.stem = nn.Sequential(conv(in_channels, width, 3, padding=1), norm(width), nn.ReLU())
        self.down = nn.Sequential(conv(width, 2 * width, 3, stride=2, padding=1), norm(2 * width), nn.ReLU())
        self.up = nn.Sequential(conv(2 * width, width, 3, padding=1), norm(width), nn.ReLU())
        self.head = conv(width, num_classes, 1)

    def forward(self, x):
        self.check_input(x)
        skip = self.stem(x)
        y = F.interpolate(self.down(skip), size=skip.shape[2:], mode="nearest")
        return self.head(self.up(y) + skip)

    def pdcr_taps(self):
        one, two = (1,) * self.spatial_dims, (2,) * self.spatial_dims
        return [TapSpec("stem", self.width, one, "encoder"), TapSpec("down", 2 * self.width, two, "encoder"),
                TapSpec("up", self.width, one, "decoder")]

    def pdcr_cross(self):
        return [("stem", "down")]

    def uafs_points(self):
        return [("down", 2 * self.width)]
'''

USER_MODULES = ("usermod_um", "ephosts_um", "broken_um", "needs_dep_um")
"""The module names these tests create (removed from ``sys.modules`` after each test)."""


def write_host(folder: Path, module: str, host: str) -> Path:
    """``folder/module.py`` registering a :class:`HostNetwork` subclass as ``host``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(HOST.format(name=host))
    return path


def write_distribution(folder: Path, entry_points: dict[str, str], name: str = "dragsaw-test-hosts",
                       version: str = "0.3") -> None:
    """An installed distribution's metadata (``*.dist-info`` with ``METADATA`` and ``entry_points.txt``) in
    ``folder``: the entry points of the group ``dragsaw.models``."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dragsaw.models]\n{lines}")


def isolate_registry(mp: pytest.MonkeyPatch) -> None:
    """Registry and entry-point state that ``mp`` restores (the entry points are loaded again)."""
    mp.setattr(registry, "_MODELS", dict(registry._MODELS))
    mp.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    mp.setattr(registry, "_FILE_MODULES", dict(registry._FILE_MODULES))
    mp.setattr(registry, "_ENTRY_POINT_FAILURES", [])
    mp.setattr(registry, "_entry_points_loaded", False)


def forget_user_modules() -> None:
    for name in USER_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """An isolated registry, the working directory in ``tmp_path``, and no user module left behind."""
    isolate_registry(monkeypatch)
    monkeypatch.chdir(tmp_path)
    forget_user_modules()
    yield
    forget_user_modules()


def fresh_dragsaw(argv: list[str], modules: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m dragsaw argv`` in a new interpreter, with ``modules`` (if given) on PYTHONPATH."""
    path = [str(modules)] if modules is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(SRC)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dragsaw", *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


# ------------------------------------------------------------------ --import, recorded in the run
@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A run trained in-process with ``dragsaw train --import usermod_um`` (host ``smallhost_um``), 1 epoch on a
    synthetic folder dataset; afterwards the module is neither on ``sys.path`` nor imported, nor the host
    registered."""
    root = tmp_path_factory.mktemp("user")
    modules = root / "modules"
    write_host(modules, "usermod_um", "smallhost_um")
    data = gray_folder(root / "data")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        isolate_registry(mp)
        mp.syspath_prepend(str(modules))
        result = run_cli([*train_argv(2, data, run, "model.name=smallhost_um", "model.options={width: 4}"),
                          "--import", "usermod_um"])
    forget_user_modules()
    assert result.code == 0, result.err
    return SimpleNamespace(run=run, data=data, modules=modules, image=sorted((data / "test" / "images").iterdir())[0])


@pytest.mark.slow
def test_train_records_the_import_and_a_fresh_process_rebuilds_the_host(user_run, tmp_path, monkeypatch, scratch):
    run = user_run.run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["name"] == "smallhost_um" and config["model"]["imports"] == ["usermod_um"]
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["host"] == {"name": "smallhost_um", "module": "usermod_um"}

    # predict and evaluate in fresh processes, without --import: the recorded module is imported again
    fresh = fresh_dragsaw(["predict", str(run), str(user_run.image), "--out", str(tmp_path / "fresh")],
                          user_run.modules, tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    done = fresh_dragsaw(["evaluate", str(run), "--out", str(tmp_path / "ev")], user_run.modules, tmp_path)
    assert done.returncode == 0, done.stderr
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for split in ("val", "test"):  # the trained model's scores, from the training process
        assert [c["case_id"] for c in again[split]["per_case"]] == [c["case_id"] for c in trained[split]["per_case"]]
        for new, old in zip(again[split]["per_case"], trained[split]["per_case"]):
            assert new["dice_fg"] == pytest.approx(old["dice_fg"], abs=1e-6)

    # the same predictions as the trained model loaded here (its module imported in this process from the record)
    monkeypatch.syspath_prepend(str(user_run.modules))
    assert run_cli(["predict", str(run), str(user_run.image), "--out", str(tmp_path / "here")]).code == 0
    stem = user_run.image.stem
    for kind in ("mask", "prob", "uncertainty"):
        here = np.asarray(Image.open(tmp_path / "here" / f"{stem}_{kind}.png"), dtype=np.int16)
        there = np.asarray(Image.open(tmp_path / "fresh" / f"{stem}_{kind}.png"), dtype=np.int16)
        assert here.shape == there.shape
        if kind == "mask":
            assert np.array_equal(here, there)
        else:  # 8-bit quantised probabilities: at most one step apart
            assert np.abs(here - there).max() <= 1


@pytest.mark.slow
def test_a_recorded_module_that_disappeared_is_named_with_the_fix(user_run, tmp_path, scratch):
    run = user_run.run
    expected = (f"run {str(run)!r} needs the module 'usermod_um' (model.imports in its config.yaml) for its host "
                "'smallhost_um', but it cannot be imported here: no module named 'usermod_um' on sys.path; install it "
                "or put the folder that holds it on PYTHONPATH, then run again (or pass --import naming the module "
                "where it is now).")
    result = run_cli(["evaluate", str(run), "--out", str(tmp_path / "ev")])
    assert result.code == 2 and result.message == f"dragsaw evaluate: error: {expected}"
    result = run_cli(["predict", str(run), str(user_run.image), "--out", str(tmp_path / "pred")])
    assert result.code == 2 and result.message == f"dragsaw predict: error: {expected}"
    assert not (tmp_path / "ev").exists() and not (tmp_path / "pred").exists()
    # the fix: --import where the module is now (here its file)
    result = run_cli(["predict", str(run), str(user_run.image), "--out", str(tmp_path / "pred"), "--import",
                      str(user_run.modules / "usermod_um.py")])
    assert result.code == 0, result.err
    assert (tmp_path / "pred" / f"{user_run.image.stem}_mask.png").is_file()


# ------------------------------------------------------------------ entry points
@pytest.mark.slow
def test_train_finds_an_entry_point_host_by_name_without_import(tmp_path, monkeypatch, scratch):
    site = tmp_path / "site"
    write_host(site, "ephosts_um", "ephost_um")
    write_distribution(site, {"ephost_um": "ephosts_um"})
    monkeypatch.syspath_prepend(str(site))
    data = gray_folder(tmp_path / "data")
    run = tmp_path / "run"
    result = run_cli(train_argv(2, data, run, "model.name=ephost_um", "model.options={width: 4}"))
    assert result.code == 0, result.err
    assert "warning" not in result.err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["imports"] == []  # an entry point's host loads by itself: nothing to record
    host = json.loads((run / "metrics.json").read_text())["host"]
    assert host == {"name": "ephost_um", "module": "ephosts_um", "distribution": "dragsaw-test-hosts",
                    "version": "0.3", "entry_point": "ephost_um = ephosts_um"}


def test_create_model_loads_the_entry_points_for_an_unknown_name(tmp_path, monkeypatch, scratch):
    site = tmp_path / "site"
    write_host(site, "ephosts_um", "ephost_um")
    write_distribution(site, {"ephost_um": "ephosts_um"})
    monkeypatch.syspath_prepend(str(site))
    model = create_model("ephost_um", in_channels=1, num_classes=2, width=2)
    assert type(model).__module__ == "ephosts_um" and model.width == 2
    assert registry.host_import("ephost_um") is None  # nothing for a run to record
    assert registry.host_source("ephost_um")["distribution"] == "dragsaw-test-hosts"


def test_an_entry_point_that_fails_is_one_warning_naming_distribution_and_fix(tmp_path, monkeypatch, scratch):
    site = tmp_path / "site"
    write_distribution(site, {"gone": "no_such_package_um.hosts"}, name="broken-hosts", version="1.2")
    monkeypatch.syspath_prepend(str(site))
    result = run_cli(["train", "--preset", "nope"])
    warning = ("dragsaw train: warning: the dragsaw.models entry point 'gone = no_such_package_um.hosts' of the "
               "installed distribution 'broken-hosts' (1.2) cannot be loaded (ModuleNotFoundError: No module named "
               "'no_such_package_um'), so the hosts it registers are not available; reinstall or upgrade broken-hosts "
               "(pip install --force-reinstall broken-hosts), fix its entry point, or uninstall it (pip uninstall "
               "broken-hosts) if you do not use its hosts.")
    assert result.code == 2 and "Traceback" not in result.err
    first, second = result.err.split("\ndragsaw train: error: ")
    assert " ".join(first.split()) == warning
    assert second.startswith("unknown preset 'nope'")
    with pytest.raises(ConfigError, match=r"unknown model 'gone'.*--import MODULE.*Entry points that failed to load: "
                                          r"the dragsaw.models entry point 'gone = no_such_package_um.hosts'"):
        create_model("gone", in_channels=1, num_classes=2)


# ------------------------------------------------------------------ messages for modules that cannot be imported
def _import_error(command: str, spec: str, tmp_path: Path) -> str:
    argv = {"train": ["train", "--preset", "folder"], "evaluate": ["evaluate", "RUN"],
            "predict": ["predict", "RUN", "x.png", "--out", str(tmp_path / "out")],
            "benchmark": ["benchmark", "--smoke", "--out", str(tmp_path / "out")]}[command]
    before = sorted(tmp_path.rglob("*"))
    result = run_cli([*argv, "--import", spec])
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert result.err.count(f"dragsaw {command}: error: ") == 1 and not result.out
    assert sorted(tmp_path.rglob("*")) == before  # nothing created
    return result.message.removeprefix(f"dragsaw {command}: error: ")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "benchmark"])
def test_unimportable_import_names_the_module_and_the_fix(command, tmp_path, scratch):
    assert _import_error(command, "no_such_module_um", tmp_path) == (
        "--import no_such_module_um: no module named 'no_such_module_um' on sys.path; install it, put the folder "
        "that holds it on PYTHONPATH (e.g. PYTHONPATH=/path/to/folder), or give the path of its .py file (e.g. "
        "--import path/to/no_such_module_um.py).")


def test_import_messages_for_each_kind_of_failure(tmp_path, monkeypatch, scratch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "broken_um.py").write_text("import math\nvalue = undefined_name_um + 1\n")
    (mods / "needs_dep_um.py").write_text("import not_installed_um\n")
    monkeypatch.syspath_prepend(str(mods))
    missing_file = tmp_path / "nope.py"
    assert _import_error("train", str(missing_file), tmp_path) == (
        f"--import {missing_file}: the file {str(missing_file)!r} does not exist; give the path of an existing .py "
        "file, or a module name importable from sys.path.")
    assert _import_error("train", "broken_um", tmp_path) == (
        "--import broken_um: importing it failed (NameError: name 'undefined_name_um' is not defined, at "
        f"{mods / 'broken_um.py'}:2); fix the module (rerun with --debug to see the traceback).")
    assert _import_error("train", str(mods / "broken_um.py"), tmp_path) == (
        f"--import {mods / 'broken_um.py'}: importing it failed (NameError: name 'undefined_name_um' is not "
        f"defined, at {mods / 'broken_um.py'}:2); fix the module (rerun with --debug to see the traceback).")
    assert _import_error("train", "needs_dep_um", tmp_path) == (
        "--import needs_dep_um: importing it failed: it needs the module 'not_installed_um', which is not installed "
        f"(ModuleNotFoundError: No module named 'not_installed_um', at {mods / 'needs_dep_um.py'}:1); install "
        "not_installed_um (or fix the module's import).")
    assert _import_error("train", "my-hosts", tmp_path) == (
        "--import my-hosts: it is neither a module name (e.g. mypkg.hosts) nor the path of a .py file; give a dotted "
        "module name importable from sys.path, or the path of a .py file.")
    with pytest.raises(ConfigError, match="--import broken_um: importing it failed") as info:
        cli.main(["--debug", "train", "--preset", "folder", "--import", "broken_um"])
    assert isinstance(info.value.__cause__, registry.ModuleImportError)  # --debug: the chain down to the NameError


def test_a_module_in_the_current_folder_gets_the_pythonpath_hint(tmp_path, scratch):
    write_host(tmp_path, "usermod_um", "smallhost_um")  # the working directory (not on sys.path under pytest)
    result = run_cli(["train", "--preset", "folder", "--import", "usermod_um"])
    assert result.code == 2 and result.message == (
        "dragsaw train: error: --import usermod_um: no module named 'usermod_um' on sys.path (usermod_um.py is in the "
        "current folder, which is not on sys.path when dragsaw runs as a command); run with PYTHONPATH=. or give the "
        "path of the file (e.g. --import ./usermod_um.py).")


def test_import_by_file_path_registers_the_host(tmp_path, scratch):
    path = write_host(tmp_path / "elsewhere", "usermod_um", "filehost_um")
    assert registry.import_user_module(str(path)) is registry.import_user_module(str(path))  # once per file
    assert registry.host_import("filehost_um") == str(path)  # what a run records: the file
    assert create_model("filehost_um", in_channels=3, num_classes=2).in_channels == 3


def test_model_imports_in_the_configuration(tmp_path, scratch):
    config = apply_overrides(load_preset("folder"), ["model.imports=[mypkg.hosts, /abs/hosts.py]"])
    assert config.model.imports == ["mypkg.hosts", "/abs/hosts.py"]
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, ["model.imports=[my hosts]"])
    assert str(info.value) == ("after --set: every entry of model.imports must be a module name (e.g. mypkg.hosts) or "
                               "the path of a .py file, got 'my hosts' (a str); fix the preset, config.yaml or the "
                               "--import / --set value.")
    # a new run refuses a module it cannot import before anything is created
    result = run_cli(["train", "--preset", "folder", "--data-root", str(tmp_path), "--out", str(tmp_path / "run"),
                      "--set", "model.imports=[no_such_module_um]"])
    assert result.code == 2 and result.message == (
        "dragsaw train: error: model.imports: cannot import 'no_such_module_um' (for the host 'deeplabv3plus'): no "
        "module named 'no_such_module_um' on sys.path; install it, put the folder that holds it on PYTHONPATH (e.g. "
        "PYTHONPATH=/path/to/folder), or give the path of its .py file (e.g. --import path/to/no_such_module_um.py).")
    assert not (tmp_path / "run").exists()


def test_train_records_import_paths_absolute_and_once():
    recorded = cli._recorded_imports(["mypkg.hosts"], ["mypkg.hosts", "hosts/net.py", "other"])
    assert recorded == ["mypkg.hosts", str(Path("hosts/net.py").resolve()), "other"]
