"""The dataset-adapter registry: ``@register_dataset("name")`` on a function ``(root, **options) -> {split: [Case]}``
makes it available to :func:`find_cases`, to the configuration's ``data.dataset`` and to ``dragsaw verify``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dragsaw._checks import did_you_mean
from dragsaw.data.cases import Case
from dragsaw.errors import ConfigError

__all__ = ["CasesBySplit", "DATASETS", "available_datasets", "find_cases", "register_dataset"]

CasesBySplit = dict[str, list[Case]]
"""What an adapter returns: ``{split: [Case, ...]}`` keyed by the dataset's own splits (``"train"``, ``"val"``,
``"test"``, or ``"all"`` when it has no official split)."""

DATASETS: dict[str, Callable[..., CasesBySplit]] = {}
"""Adapter registry: name -> function(root, **options) returning ``{split: [Case, ...]}``; filled by
:func:`register_dataset` when the adapter modules are imported."""

_A = TypeVar("_A", bound=Callable[..., CasesBySplit])


def register_dataset(name: str) -> Callable[[_A], _A]:
    """Decorator that registers a dataset adapter under ``name``.

    The adapter takes the dataset folder as its first argument (and keyword options, e.g. ``ph2_root``) and returns
    ``{split: [Case, ...]}``. Registering the same function twice is harmless.

    Raises:
        ConfigError: an empty name, or a name already registered to another function (registries are global, so
            replacing an adapter silently would change what every run reads).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"register_dataset needs a non-empty dataset name, got {name!r}.")

    def decorator(adapter: _A) -> _A:
        current = DATASETS.get(name)
        if current is not None and current is not adapter:
            raise ConfigError(f"dataset name {name!r} is already registered to {current.__module__}."
                              f"{current.__qualname__}; register yours under another name.")
        DATASETS[name] = adapter
        return adapter

    return decorator


def available_datasets() -> list[str]:
    """Sorted registry names accepted by :func:`find_cases` (and ``data.dataset``)."""
    return sorted(DATASETS)


def find_cases(name: str, root: str | Path, **options) -> CasesBySplit:
    """Find a dataset's cases by registry name.

    Args:
        name: One of :data:`DATASETS` (e.g. ``"isic2016"``, ``"folder"``, ``"decathlon"``).
        root: The dataset folder (for ``"isic2016_ph2"`` the ISIC 2016 folder, with ``ph2_root=...``).
        **options: Further adapter arguments.

    Returns:
        ``{split: [Case, ...]}`` as the adapter returns it.

    Raises:
        ConfigError: unknown name (valid names listed, with the closest) or options the adapter does not take.
        DataError: as raised by the adapter.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(available_datasets())}."
                          f"{did_you_mean(name, DATASETS)}")
    adapter = DATASETS[name]
    try:
        inspect.signature(adapter).bind(root, **options)
    except TypeError as exc:
        params = list(inspect.signature(adapter).parameters)
        raise ConfigError(
            f"dataset {name!r} cannot take options {sorted(options)} ({exc}); its arguments are {params}"
        ) from exc
    return adapter(root, **options)
