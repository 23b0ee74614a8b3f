"""Shared layers: stride/size arithmetic, centring of strided convs, crop, concat, resize."""

from __future__ import annotations

import math

import pytest
import torch

from dragsaw.errors import ConfigError
from dragsaw.models.layers import Concat, ConvNormAct, conv, conv_transpose, crop_to, make_norm, max_pool, resize


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("size", [1, 2, 5, 8, 9, 16, 17])
def test_strided_conv_and_ceil_pool_give_ceil_sizes(dims, size):
    x = torch.zeros(1, 1, *(size,) * dims)
    assert conv(dims, 1, 1, 3, 2)(x).shape[2:] == (math.ceil(size / 2),) * dims
    assert conv(dims, 1, 1, 7, 2)(x).shape[2:] == (math.ceil(size / 2),) * dims
    assert conv(dims, 1, 1, 1, 2)(x).shape[2:] == (math.ceil(size / 2),) * dims
    assert max_pool(dims, 2, 2, ceil_mode=True)(x).shape[2:] == (math.ceil(size / 2),) * dims
    assert max_pool(dims, 3, 2, padding=1)(x).shape[2:] == (math.ceil(size / 2),) * dims
    assert conv_transpose(dims, 1, 1, 2)(x).shape[2:] == (2 * size,) * dims


def test_strided_dilated_conv_output_i_is_centred_on_input_i_times_stride():
    # a kernel that only looks at its centre tap copies input[i * s] to output[i]
    layer = conv(2, 1, 1, 3, 2, dilation=1)
    layer_dilated = conv(2, 1, 1, 3, 1, dilation=3)
    for module in (layer, layer_dilated):
        with torch.no_grad():
            module.weight.zero_()
            module.weight[0, 0, 1, 1] = 1.0
    x = torch.arange(9 * 7, dtype=torch.float32).reshape(1, 1, 9, 7)
    assert torch.equal(layer(x)[0, 0], x[0, 0, ::2, ::2])
    assert torch.equal(layer_dilated(x), x)


def test_conv_norm_act_has_named_parts_and_no_inplace_activation():
    block = ConvNormAct(3, 2, 4, 3, 2, norm="instance", act="leaky_relu", negative_slope=0.2)
    assert [name for name, _ in block.named_children()] == ["conv", "norm", "act"]
    assert isinstance(block.norm, torch.nn.InstanceNorm3d) and block.norm.affine
    assert block.act.negative_slope == 0.2 and not block.act.inplace
    assert [name for name, _ in ConvNormAct(2, 2, 4, act=None).named_children()] == ["conv", "norm"]


def test_unknown_norm_and_act_are_config_errors_with_suggestions():
    with pytest.raises(ConfigError, match="Did you mean 'batch'"):
        make_norm("batchnorm", 2, 4)
    with pytest.raises(ConfigError, match="act='gelu'"):
        ConvNormAct(2, 1, 1, act="gelu")


def test_concat_takes_one_list_argument_so_it_can_be_wrapped_in_a_sequential():
    a, b = torch.ones(1, 2, 3, 3), torch.zeros(1, 1, 3, 3)
    out = torch.nn.Sequential(Concat(), torch.nn.Identity())([a, b])
    assert torch.equal(out, torch.cat([a, b], dim=1))


def test_crop_keeps_the_leading_locations_and_resize_is_a_noop_at_the_same_size():
    x = torch.arange(2 * 5 * 4 * 3, dtype=torch.float32).reshape(1, 2, 5, 4, 3)
    assert torch.equal(crop_to(x, (4, 4, 2)), x[:, :, :4, :, :2])
    assert resize(x, (5, 4, 3)) is x
    up = resize(torch.tensor([[[0.0, 3.0]]]).unsqueeze(-1).expand(1, 1, 2, 2), (4, 2))
    assert torch.allclose(up[0, 0, :, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))  # align_corners=True
