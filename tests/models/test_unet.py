"""U-Net: hand-counted parameters, sizes 1..n, norm options, description for several depths."""

from __future__ import annotations

import pytest
import torch

from dragsaw.errors import ConfigError
from dragsaw.models import UNet


def _hand_count(in_channels: int, channels: tuple[int, ...], classes: int, dims: int) -> int:
    k = 3**dims
    total, previous = 0, in_channels
    for c in channels:  # two bias-free convs + two norms (weight and bias) per stage
        total += previous * c * k + c * c * k + 4 * c
        previous = c
    for deep, shallow in zip(channels[:0:-1], channels[-2::-1]):
        total += deep * shallow * 2**dims  # transposed conv, kernel 2, no bias
        total += 2 * shallow * shallow * k + shallow * shallow * k + 4 * shallow
    return total + channels[0] * classes + classes


@pytest.mark.parametrize("dims", [2, 3])
def test_parameter_count_matches_a_hand_count(dims):
    model = UNet(dims, 1, 2, channels=(4, 8, 16))
    assert sum(p.numel() for p in model.parameters()) == _hand_count(1, (4, 8, 16), 2, dims)
    if dims == 2:
        assert _hand_count(1, (4, 8, 16), 2, 2) == 7470


def test_default_unet_size():
    with torch.device("meta"):
        model = UNet(2, 1, 2)
    assert sum(p.numel() for p in model.parameters()) == _hand_count(1, (32, 64, 128, 256, 512), 2, 2)


@pytest.mark.parametrize("size", range(1, 10))
def test_every_input_size_gives_logits_of_the_same_size(size):
    torch.manual_seed(0)
    model = UNet(2, 1, 3, channels=(2, 4, 8, 8)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size + 3)).shape == (1, 3, size, size + 3)


def test_instance_norm_option_builds_instance_norms_only():
    model = UNet(3, 1, 2, channels=(2, 4, 8), norm="instance")
    kinds = {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    assert kinds == {"InstanceNorm3d"}
    model.eval()
    assert model(torch.randn(1, 1, 5, 6, 7)).shape == (1, 2, 5, 6, 7)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_description_follows_the_depth(depth):
    channels = tuple(2 ** (i + 1) for i in range(depth + 1))
    model = UNet(2, 1, 2, channels=channels)
    taps = model.pdcr_taps()
    assert [(t.name, t.stride, t.role) for t in taps] == [
        ("encoder.1", (2, 2), "encoder"),
        ("encoder.2", (4, 4), "encoder"),
        (f"decoder.{depth - 2}", (2, 2), "decoder"),
        (f"decoder.{depth - 1}", (1, 1), "decoder"),
    ]
    assert [t.channels for t in taps] == [channels[1], channels[2], channels[1], channels[0]]
    assert model.pdcr_cross() == [("encoder.1", "encoder.2")]
    # every decoder stage below full resolution
    assert model.uafs_points() == [(f"decoder.{j}", channels[depth - 1 - j]) for j in range(depth - 1)]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"channels": (4, 8)}, "at least 3 entries"),
        ({"channels": (4, 0, 8)}, ">= 1"),
        ({"channels": "abc"}, "sequence of ints"),
        ({"norm": "group"}, "norm='group' is not supported"),
    ],
)
def test_invalid_options_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        UNet(2, 1, 2, **kwargs)
