"""Registry: names, lookups with suggestions, option checks, overwrite warnings; TapSpec validation."""

from __future__ import annotations

import pytest
import torch

from dragsaw.errors import ConfigError
from dragsaw.models import HostNetwork, TapSpec, available_models, create_model, register_model, registry
from dragsaw.models.unet import UNet


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that the test may modify."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def test_available_models_lists_the_hosts_sorted():
    assert available_models() == ["deeplabv3plus", "dynunet", "monai_unet", "segresnet", "swinunetr", "unet"]


def test_create_model_builds_the_registered_class_with_the_given_sizes():
    model = create_model("unet", spatial_dims=3, in_channels=4, num_classes=5, channels=(2, 4, 8))
    assert isinstance(model, UNet)
    assert (model.spatial_dims, model.in_channels, model.num_classes) == (3, 4, 5)
    assert model.head.out_channels == 5 and model.encoder[0].conv1.conv.in_channels == 4


@pytest.mark.parametrize(
    ("name", "suggestion"), [("unte", "unet"), ("deeplabv3", "deeplabv3plus"), ("DynUNet", "dynunet")]
)
def test_unknown_name_lists_the_models_and_suggests_the_closest(name, suggestion):
    with pytest.raises(ConfigError) as info:
        create_model(name, in_channels=1, num_classes=2)
    message = str(info.value)
    assert repr(name) in message and f"Did you mean {suggestion!r}" in message
    assert all(repr(n) in message for n in available_models())


def test_unknown_name_without_a_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as info:
        create_model("transformer", in_channels=1, num_classes=2)
    assert "Did you mean" not in str(info.value)


def test_unknown_option_names_the_option_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"no option 'widht'.*Did you mean 'width'"):
        create_model("deeplabv3plus", in_channels=3, num_classes=2, widht=0.5)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"spatial_dims": 1}, r"^spatial_dims must be 2 or 3, got 1\.$"),
        ({"spatial_dims": 4}, r"^spatial_dims must be 2 or 3, got 4\.$"),
        ({"in_channels": 0}, "in_channels must be >= 1"),
        ({"num_classes": 2.0}, "num_classes must be an int"),
    ],
)
def test_invalid_common_arguments_raise_config_errors(kwargs, pattern):
    arguments = {"in_channels": 1, "num_classes": 2, **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        create_model("unet", channels=(2, 4, 8), **arguments)


class _Tiny(HostNetwork):
    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__(spatial_dims, in_channels, num_classes)
        self.head = torch.nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x):
        return self.head(x)

    def pdcr_taps(self):
        return []

    def pdcr_cross(self):
        return []

    def uafs_points(self):
        return []


def test_register_model_adds_a_name_and_warns_when_it_is_replaced(scratch_registry):
    register_model("tiny")(_Tiny)
    assert "tiny" in available_models()
    assert isinstance(create_model("tiny", in_channels=1, num_classes=3), _Tiny)
    register_model("tiny")(_Tiny)  # same factory again: no warning
    with pytest.warns(UserWarning, match="'tiny' was registered to .*_Tiny"):
        register_model("tiny")(lambda spatial_dims, in_channels, num_classes: _Tiny(spatial_dims, in_channels))


def test_register_model_rejects_factories_without_the_required_arguments(scratch_registry):
    with pytest.raises(ConfigError, match=r"does not accept \['num_classes'\]"):
        register_model("bad")(lambda spatial_dims, in_channels: None)
    with pytest.raises(ConfigError, match="non-empty model name"):
        register_model("  ")


def test_a_factory_that_returns_something_else_is_reported(scratch_registry):
    register_model("plain")(lambda spatial_dims, in_channels, num_classes: torch.nn.Identity())
    with pytest.raises(ConfigError, match="returned Identity, not a dragsaw.models.HostNetwork"):
        create_model("plain", in_channels=1, num_classes=2)


def test_factories_with_var_kwargs_receive_unchecked_options(scratch_registry):
    received = {}

    def factory(spatial_dims, in_channels, num_classes, **options):
        received.update(options)
        return _Tiny(spatial_dims, in_channels, num_classes)

    register_model("open")(factory)
    create_model("open", in_channels=1, num_classes=2, anything=3)
    assert received == {"anything": 3}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"role": "middle"}, "role must be one of"),
        ({"stride": [2, 2]}, "stride must be a tuple"),
        ({"stride": (2, 0)}, "stride must be a tuple"),
        ({"channels": 0}, "channels must be >= 1"),
        ({"name": ""}, "non-empty module name"),
    ],
)
def test_tapspec_validates_its_fields(kwargs, pattern):
    fields = {"name": "encoder.1", "channels": 8, "stride": (2, 2), "role": "encoder", **kwargs}
    with pytest.raises(ConfigError, match=pattern):
        TapSpec(**fields)


def test_tapspec_is_frozen_and_hashable():
    spec = TapSpec("encoder.1", 8, (2, 2), "encoder")
    with pytest.raises(AttributeError):
        spec.channels = 4
    assert {spec: 1}[TapSpec("encoder.1", 8, (2, 2), "encoder")] == 1
