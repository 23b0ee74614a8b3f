"""Model registry: networks by name, created with checked options.

Usage::

    model = create_model("deeplabv3plus", in_channels=3, num_classes=2, backbone="resnet18", width=0.25)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .._checks import did_you_mean
from ..errors import ConfigError
from .base import HostNetwork

__all__ = ["available_models", "create_model", "plan_topology", "register_model"]

_MODELS: dict[str, Callable[..., HostNetwork]] = {}
_F = TypeVar("_F", bound=Callable[..., HostNetwork])
_REQUIRED = ("spatial_dims", "in_channels", "num_classes")


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
    """Sorted registry names accepted by :func:`create_model`."""
    return sorted(_MODELS)


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
    if name not in _MODELS:
        raise ConfigError(
            f"unknown model {name!r}; available models: {available_models()}.{did_you_mean(name, _MODELS)}"
        )
    factory = _MODELS[name]
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
    if name not in _MODELS:
        raise ConfigError(
            f"unknown model {name!r}; available models: {available_models()}.{did_you_mean(name, _MODELS)}"
        )
    planner = getattr(_MODELS[name], "plan_topology", None)
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
