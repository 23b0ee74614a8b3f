"""Model registry: networks by name, created with checked options.

Usage::

    model = create_model("deeplabv3plus", in_channels=3, num_classes=2, backbone="resnet18", width=0.25)

Hosts of your own are registered by importing the module that defines them (``@register_model``): in Python, by
importing it; on the command line, with ``--import MODULE`` (recorded in the run as ``model.imports``, see
:func:`import_user_module`); or, for an installed package, through an entry point of the group
``dragsaw.models`` (:data:`ENTRY_POINT_GROUP`), which :func:`load_entry_points` imports once per process (the
command line at its start, :func:`create_model` when it meets an unknown name). See ``docs/user-hosts.md``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .._checks import did_you_mean
from ..errors import ConfigError
from .base import HostNetwork

__all__ = [
    "ENTRY_POINT_GROUP", "EntryPointWarning", "ModuleImportError", "available_models", "create_model", "host_import",
    "host_source", "import_modules", "import_user_module", "is_module_spec", "load_entry_points", "plan_topology",
    "register_model",
]

_MODELS: dict[str, Callable[..., HostNetwork]] = {}
_F = TypeVar("_F", bound=Callable[..., HostNetwork])
_REQUIRED = ("spatial_dims", "in_channels", "num_classes")

ENTRY_POINT_GROUP = "dragsaw.models"
"""The entry-point group of installed packages that provide hosts: each entry point names a module (or an object
in one) whose import registers hosts with :func:`register_model`."""

_entry_points_loaded = False  # load_entry_points ran in this process
_ENTRY_POINT_FAILURES: list[str] = []  # the messages of the entry points that could not be loaded
_SOURCES: dict[str, dict[str, str]] = {}  # host name -> its entry point's distribution, version and entry point
_FILE_MODULES: dict[str, str] = {}  # module name -> the .py file it was imported from (import_user_module)
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HINT = ("A host of your own is registered by importing its module: `--import MODULE` on the command line, "
         "model.imports in the configuration, or a dragsaw.models entry point of an installed package (see "
         "docs/user-hosts.md).")


class EntryPointWarning(UserWarning):
    """An entry point of the group ``dragsaw.models`` could not be loaded (the message names its distribution, the
    entry point and the fix)."""


class ModuleImportError(ConfigError):
    """A user module (``--import``, ``model.imports``) cannot be imported.

    Attributes:
        spec: the module name or ``.py`` path as given.
        reason: why, e.g. ``no module named 'usermod' on sys.path``.
        remedy: what to do about it.
        missing: the module itself was not found (as opposed to failing while it was imported).
    """

    def __init__(self, spec: str, reason: str, remedy: str, missing: bool) -> None:
        super().__init__(f"cannot import {spec!r}: {reason}; {remedy}.")
        self.spec, self.reason, self.remedy, self.missing = spec, reason, remedy, missing


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator that registers a network class (or factory function) under ``name``.

    The factory must accept ``spatial_dims``, ``in_channels`` and ``num_classes`` as keywords and return a
    :class:`~dragsaw.models.base.HostNetwork`. Registering a name twice replaces the first entry with a warning.

    Args:
        name: registry name, e.g. ``"unet"``.

    Raises:
        ConfigError: for an empty name or a factory that lacks one of the three required keywords.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"register_model needs a non-empty model name, got {name!r}.")

    def decorator(factory: _F) -> _F:
        params = _parameters(factory)
        if params is not None:
            lacking = [p for p in _REQUIRED if p not in params]
            if lacking:
                raise ConfigError(
                    f"register_model({name!r}): {getattr(factory, '__qualname__', factory)!r} does not accept "
                    f"{lacking}; every model factory takes spatial_dims, in_channels and num_classes."
                )
        if name in _MODELS and _MODELS[name] is not factory:
            warnings.warn(
                f"register_model: model name {name!r} was registered to {_describe(_MODELS[name])}; "
                f"it now refers to {_describe(factory)}.",
                UserWarning,
                stacklevel=2,
            )
        _MODELS[name] = factory
        return factory

    return decorator


def available_models() -> list[str]:
    """Sorted registry names accepted by :func:`create_model` (with the hosts of the ``dragsaw.models`` entry
    points, loaded once)."""
    load_entry_points()
    return sorted(_MODELS)


def _factory(name: str) -> Callable[..., HostNetwork]:
    """The factory registered as ``name``; an unknown name first loads the entry points (once).

    Raises:
        ConfigError: the name is still unknown (listing the valid ones, the closest match, the ways to register a
            host and the entry points that failed to load).
    """
    if name not in _MODELS:
        load_entry_points()
    if name not in _MODELS:
        failed = " ".join(_ENTRY_POINT_FAILURES)
        failed = f" Entry points that failed to load: {failed}" if failed else ""
        raise ConfigError(f"unknown model {name!r}; available models: {sorted(_MODELS)}.{did_you_mean(name, _MODELS)} "
                          f"{_HINT}{failed}")
    return _MODELS[name]


def create_model(
    name: str, *, spatial_dims: int = 2, in_channels: int, num_classes: int, **kwargs: Any
) -> HostNetwork:
    """Build the network registered as ``name``.

    Args:
        name: a name from :func:`available_models`.
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: input image channels.
        num_classes: output channels (logits).
        **kwargs: network-specific options (see the network class), checked by name.

    Returns:
        The network, in training mode, with freshly initialised (or loaded, where it takes ``weights``) parameters.

    Raises:
        ConfigError: for an unknown model name or option (listing the valid ones with the closest match) and for
            invalid option values.
    """
    factory = _factory(name)
    params = _parameters(factory)
    if params is not None:
        options = [p for p in params if p not in _REQUIRED]
        for key in kwargs:
            if key not in params:
                raise ConfigError(
                    f"model {name!r} has no option {key!r}; its options are {options}.{did_you_mean(key, options)}"
                )
    model = factory(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)
    if not isinstance(model, HostNetwork):
        raise ConfigError(
            f"model {name!r} is registered to {_describe(factory)}, which returned {type(model).__name__}, "
            "not a dragsaw.models.HostNetwork."
        )
    return model


def plan_topology(
    name: str,
    *,
    spatial_dims: int,
    input_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The data-dependent constructor options of the network registered as ``name`` (its layout for this data).

    Calls the factory's ``plan_topology`` classmethod (see :meth:`dragsaw.models.base.HostNetwork.plan_topology`);
    factories without one (functions, hosts whose layout does not depend on the data) give ``{}``. The result is
    passed back to :func:`create_model` together with ``options``.

    Args:
        name: a name from :func:`available_models`.
        spatial_dims: 2 or 3.
        input_size: the training input / patch size, one int per spatial axis.
        spacing: the target voxel spacing per axis, or ``None``.
        options: the user's constructor options (``model.options``).

    Returns:
        JSON-serialisable keyword arguments, e.g. ``{"kernel_size": [[3, 3, 3], ...], "strides": [[1, 1, 1], ...]}``
        for ``"dynunet"``.

    Raises:
        ConfigError: an unknown model name (with the valid ones) or values that give no layout.
    """
    planner = getattr(_factory(name), "plan_topology", None)
    if planner is None:
        return {}
    return dict(planner(spatial_dims=spatial_dims, input_size=input_size, spacing=spacing, options=options or {}))


def _parameters(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword-able parameter names of ``factory``, or ``None`` when it accepts ``**kwargs``."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return None
    names = []
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(param.name)
    return names


def _describe(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


# ------------------------------------------------------------------ user modules and entry points
def load_entry_points(*, warn: bool = True) -> list[str]:
    """Import the entry points of the group ``dragsaw.models`` (:data:`ENTRY_POINT_GROUP`), once per process.

    Each entry point names a module (``name = package.hosts``) or an object in one (``package.hosts:MyNet``);
    importing it registers its hosts with :func:`register_model`. An entry point that cannot be loaded (a missing
    module, an error in it) is skipped: its message names the distribution, the entry point and the fix.

    Args:
        warn: issue each failure as an :class:`EntryPointWarning` too (the command line prints them itself).

    Returns:
        The messages of the entry points that failed in this call; ``[]`` when they were loaded before.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    try:
        found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # unreadable package metadata somewhere on sys.path
        found, failures = [], [f"the installed packages' {ENTRY_POINT_GROUP} entry points cannot be listed "
                                f"({_failure(exc)}); hosts of installed packages are not available. Check the "
                                "package metadata on sys.path (pip check)."]
    else:
        failures = []
    for entry in found:
        dist = getattr(entry, "dist", None)
        name = (dist.metadata["Name"] if dist is not None else None) or "an unknown distribution"
        version = (dist.version if dist is not None else None) or "?"
        before = dict(_MODELS)
        try:
            entry.load()
        except Exception as exc:  # whatever a package's import raises: a warning, never a traceback
            failures.append(
                f"the {ENTRY_POINT_GROUP} entry point '{entry.name} = {entry.value}' of the installed distribution "
                f"{name!r} ({version}) cannot be loaded ({_failure(exc)}), so the hosts it registers are not "
                f"available; reinstall or upgrade {name} (pip install --force-reinstall {name}), fix its entry point, "
                f"or uninstall it (pip uninstall {name}) if you do not use its hosts."
            )
            continue
        module = entry.value.partition(":")[0].strip()
        for host, factory in _MODELS.items():
            origin = getattr(factory, "__module__", "") or ""
            if before.get(host) is not factory or origin == module or origin.startswith(module + "."):
                _SOURCES[host] = {"distribution": name, "version": version,
                                  "entry_point": f"{entry.name} = {entry.value}"}
    _ENTRY_POINT_FAILURES.extend(failures)
    if warn:
        for message in failures:
            warnings.warn(message, EntryPointWarning, stacklevel=2)
    return failures


def is_module_spec(spec: Any) -> bool:
    """Whether ``spec`` is a dotted module name (``mypkg.hosts``) or the path of a ``.py`` file."""
    return isinstance(spec, str) and (bool(_MODULE_NAME.match(spec)) or (
        spec.endswith(".py") and len(spec) > 3 and spec.strip() == spec))


def import_user_module(spec: str) -> ModuleType:
    """Import the module ``spec``: a dotted name importable from ``sys.path`` or the path of a ``.py`` file (imported
    once per file, as a module named after it). Importing it registers its hosts.

    Raises:
        ModuleImportError: ``spec`` is neither, the module is not found (``missing``), or importing it raised
            (the exception and where, never the traceback; ``from`` the original).
    """
    if not is_module_spec(spec):
        raise ModuleImportError(str(spec), "it is neither a module name (e.g. mypkg.hosts) nor the path of a .py file",
                                "give a dotted module name importable from sys.path, or the path of a .py file",
                                missing=True)
    if spec.endswith(".py"):
        return _import_file(spec)
    if spec not in sys.modules:
        importlib.invalidate_caches()  # a module written since the folder was last listed
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):  # the module itself is not there
            raise ModuleImportError(spec, *_not_found(spec), missing=True) from exc
        raise _failed(spec, exc) from exc
    except Exception as exc:
        raise _failed(spec, exc) from exc


def _not_found(spec: str) -> tuple[str, str]:
    """Reason and remedy for a module name that is not on ``sys.path``."""
    reason = f"no module named {spec!r} on sys.path"
    remedy = ("install it, put the folder that holds it on PYTHONPATH (e.g. PYTHONPATH=/path/to/folder), or give "
              f"the path of its .py file (e.g. --import path/to/{spec.rsplit('.', 1)[-1]}.py)")
    local = Path.cwd() / Path(*spec.split("."))
    if local.with_suffix(".py").is_file() or (local / "__init__.py").is_file():
        reason += (f" ({local.relative_to(Path.cwd())}{'.py' if local.with_suffix('.py').is_file() else '/'} is in the "
                   "current folder, which is not on sys.path when dragsaw runs as a command)")
        remedy = f"run with PYTHONPATH=. or give the path of the file (e.g. --import ./{local.name}.py)"
    return reason, remedy


def _failed(spec: str, exc: BaseException) -> ModuleImportError:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        return ModuleImportError(spec, f"importing it failed: it needs the module {exc.name!r}, which is not "
                                       f"installed ({_failure(exc)})",
                                 f"install {top} (or fix the module's import)", missing=False)
    return ModuleImportError(spec, f"importing it failed ({_failure(exc)})",
                             "fix the module (rerun with --debug to see the traceback)", missing=False)


def _import_file(spec: str) -> ModuleType:
    """Import the ``.py`` file ``spec`` as a module named after it (a unique name when another module has that
    name), once per file."""
    path = Path(spec).expanduser().resolve()
    for name, file in _FILE_MODULES.items():
        if file == str(path) and name in sys.modules:
            return sys.modules[name]
    if not path.is_file():
        raise ModuleImportError(spec, f"the file {str(path)!r} does not exist",
                                "give the path of an existing .py file, or a module name importable from sys.path",
                                missing=True)
    name = path.stem
    taken = not _MODULE_NAME.match(name) or "." in name or name in sys.modules
    if not taken:
        try:
            taken = importlib.util.find_spec(name) is not None  # e.g. a file named like a standard module
        except (ImportError, ValueError):
            taken = True
    if taken:
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"_dragsaw_user_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ModuleImportError(spec, f"{str(path)!r} cannot be imported as a Python module",
                                "give the path of a .py file", missing=False)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _failed(spec, exc) from exc
    _FILE_MODULES[name] = str(path)
    return module


def _failure(exc: BaseException) -> str:
    """``Type: message, at file:line``: the exception and the last place outside the import machinery."""
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text[:300] + '...' if len(text) > 300 else text}" if text else type(exc).__name__
    where = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if not frame.filename.startswith("<") and "importlib" not in frame.filename and \
                    Path(frame.filename).resolve() != Path(__file__).resolve():
                where = f"{frame.filename}:{frame.lineno}"
    return f"{text}, at {where}" if where else text


def host_import(name: str) -> str | None:
    """What a process must import to rebuild the host ``name``: its module's name, or its ``.py`` file for a module
    imported from one; ``"__main__"`` for a host defined by the running script; ``None`` for the built-in hosts,
    the hosts of entry points (they load by themselves) and unknown names."""
    if name not in _MODELS:
        load_entry_points()
    factory = _MODELS.get(name)
    module = getattr(factory, "__module__", None)
    if factory is None or not module or name in _SOURCES or module == "dragsaw" or module.startswith("dragsaw."):
        return None
    return _FILE_MODULES.get(module, module)


def host_source(name: str) -> dict[str, str]:
    """Where the host ``name`` comes from, for a run's record: ``{"name", "module"}``, with ``"file"`` for a module
    imported from a ``.py`` file and ``"distribution"``, ``"version"``, ``"entry_point"`` for an entry point's host;
    ``{"name"}`` alone for an unknown name."""
    factory = _MODELS.get(name)
    if factory is None:
        return {"name": name}
    module = getattr(factory, "__module__", "?")
    record = {"name": name, "module": module}
    if module in _FILE_MODULES:
        record["file"] = _FILE_MODULES[module]
    return {**record, **_SOURCES.get(name, {})}


def import_modules(specs: Iterable[str]) -> list[ModuleImportError]:
    """Import each of ``specs`` (see :func:`import_user_module`), going on after a failure.

    Returns:
        the failures, in order (empty when every module was imported).
    """
    failures = []
    for spec in specs:
        try:
            import_user_module(spec)
        except ModuleImportError as exc:
            failures.append(exc)
    return failures
