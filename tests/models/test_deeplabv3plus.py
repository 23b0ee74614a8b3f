"""DeepLabV3+: parameter counts against hand formulas and published numbers, structure, sizes and options."""

from __future__ import annotations

import math

import pytest
import torch

from dragsaw.errors import ConfigError, DataError
from dragsaw.models import DeepLabV3Plus, create_model


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _meta(**kwargs) -> DeepLabV3Plus:
    with torch.device("meta"):  # full-width networks without allocating their weights
        return create_model("deeplabv3plus", in_channels=3, num_classes=2, **kwargs)


def test_full_xception_parameter_count():
    model = _meta()
    total = _count(model)
    # ASPP, decoder and head at width 1 by hand (conv weights, 2 affine params per BN channel)
    aspp = (2048 * 256 + 512) + 3 * (2048 * 256 * 9 + 512) + (2048 * 256 + 512) + (1280 * 256 + 512)
    decoder = (128 * 48 + 96) + (304 * 256 * 9 + 512) + (256 * 256 * 9 + 512)
    head = 256 * 2 + 2
    assert _count(model.aspp) == aspp
    assert _count(model.decoder) == decoder
    assert _count(model.head) == head
    assert total == 54_700_434  # 54.7 M, the usual figure for DeepLabV3+ with aligned Xception-65
    assert 54_000_000 < total < 55_500_000


def test_one_middle_block_has_the_hand_computed_parameter_count():
    unit = 728 * 9 + 2 * 728 + 728 * 728 + 2 * 728  # depthwise, inner BN, pointwise, BN
    assert _count(_meta(middle_blocks=3)) - _count(_meta(middle_blocks=2)) == 3 * unit


@pytest.mark.parametrize(
    ("backbone", "published", "classifier"),
    [("resnet18", 11_689_512, 513_000), ("resnet34", 21_797_672, 513_000), ("resnet50", 25_557_032, 2_049_000)],
)
def test_resnet_backbones_match_the_published_imagenet_models_without_classifier(backbone, published, classifier):
    assert _count(_meta(backbone=backbone).backbone) == published - classifier


def test_layer_settings_follow_the_paper():
    model = _meta()
    assert [b.conv.dilation for b in model.aspp.branches] == [(1, 1), (6, 6), (12, 12), (18, 18)]
    exit_convs = [model.backbone.get_submodule(n) for n in ("conv3", "conv4", "conv5")]
    assert [unit.conv.depthwise.dilation for unit in exit_convs] == [(2, 2)] * 3
    assert model.aspp.project.dropout.p == 0.5
    assert (model.decoder.drop1.p, model.decoder.drop2.p) == (0.5, 0.1)
    assert model.decoder.low_level.conv.out_channels == 48
    assert dict(model.uafs_points())["decoder.concat"] == 304
    assert len(model.backbone.middle) == 16
    layer4 = _meta(backbone="resnet50").backbone.layer4
    assert [block.conv2.dilation for block in layer4] == [(1, 1), (2, 2), (2, 2)]
    assert [block.conv2.stride for block in layer4] == [(1, 1)] * 3


@pytest.mark.parametrize("backbone", ["xception", "resnet18"])
@pytest.mark.parametrize("size", [(1, 1), (16, 16), (17, 33), (31, 64)])
def test_backbone_features_have_ceil_sizes_at_strides_4_and_16(backbone, size):
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus", in_channels=1, num_classes=3, backbone=backbone, width=0.0625,
        **({"middle_blocks": 0} if backbone == "xception" else {}),
    ).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        low, high = model.backbone(x)
        out = model(x)
    assert low.shape[2:] == tuple(math.ceil(s / 4) for s in size)
    assert high.shape[2:] == tuple(math.ceil(s / 16) for s in size)
    assert out.shape == (1, 3, *size)


def test_width_scales_every_channel_count():
    model = _meta(width=0.5)
    assert model.backbone.conv1.conv.out_channels == 16 and model.backbone.out_channels == 1024
    assert [c for _, c in model.uafs_points()] == [16, 32, 768, 768, 1024, 24, 152]
    assert [t.channels for t in model.pdcr_taps()] == [32, 64, 24, 128]


def test_default_description_for_the_two_backbone_families():
    xception, resnet = _meta(), _meta(backbone="resnet34")
    assert [(t.name, t.channels, t.stride, t.role) for t in xception.pdcr_taps()] == [
        ("backbone.conv2", 64, (2, 2), "encoder"),
        ("backbone.block1", 128, (4, 4), "encoder"),
        ("decoder.low_level", 48, (4, 4), "decoder"),
        ("decoder.conv1", 256, (4, 4), "decoder"),
    ]
    assert xception.pdcr_cross() == [("backbone.conv2", "backbone.block1")]
    assert [n for n, _ in xception.uafs_points()] == [
        "backbone.conv1", "backbone.conv2", "backbone.conv3", "backbone.conv4", "backbone.conv5",
        "decoder.low_level", "decoder.concat",
    ]
    assert [(t.name, t.channels) for t in resnet.pdcr_taps()][:2] == [("backbone.stem", 64), ("backbone.layer1", 64)]
    assert resnet.uafs_points() == [
        ("backbone.stem", 64), ("backbone.layer4", 512), ("decoder.low_level", 48), ("decoder.concat", 304)
    ]


def test_xception_residual_sees_the_rectified_input():
    # block(x) = units(relu(x)) + relu(x) for a middle block: make the units output zero
    torch.manual_seed(0)
    block = DeepLabV3Plus(2, 3, 2, width=0.0625, middle_blocks=1).backbone.middle[0]
    for unit in block.units:
        torch.nn.init.zeros_(unit.norm.weight)
        torch.nn.init.zeros_(unit.norm.bias)
    block.eval()
    x = torch.randn(1, block.units[0].conv.depthwise.in_channels, 3, 3)
    assert torch.equal(block(x), torch.relu(x))


def test_training_with_a_single_image_is_refused_but_eval_accepts_it():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", in_channels=3, num_classes=2, backbone="resnet18", width=0.0625)
    with pytest.raises(DataError, match="batch of at least 2"):
        model(torch.randn(1, 3, 20, 20))
    model.eval()
    assert model(torch.randn(1, 3, 20, 20)).shape == (1, 2, 20, 20)


_SMALL = {"width": 0.0625, "middle_blocks": 0}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"backbone": "xceptoin"}, "Did you mean 'xception'"),
        ({"backbone": "resnet101", "middle_blocks": None}, "backbone='resnet101' is not supported"),
        ({"backbone": "resnet18", "middle_blocks": 4}, "middle_blocks=4 applies to backbone='xception' only"),
        ({"width": 0}, r"width=0 is outside \(0.0, inf\)"),
        ({"width": "half"}, "width must be a number"),
        ({"middle_blocks": -1}, "middle_blocks must be >= 0"),
        ({"atrous_rates": (6, 0)}, "atrous_rates=.*>= 1"),
        ({"atrous_rates": ()}, "at least 1 entries"),
        ({"weights_layout": "timm", "weights": __file__}, "weights_layout='timm' is not supported"),
    ],
)
def test_invalid_options_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DeepLabV3Plus(2, 3, 2, **{**_SMALL, **kwargs})
