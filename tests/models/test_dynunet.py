"""DynUNet (MONAI's network as the 3D host): the planning rule by hand, equality with MONAI's forward, deep
supervision at each head's own resolution, padding, the taps, options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dragsaw.errors import ConfigError
from dragsaw.models import DynUNet, plan_dynunet


def test_plan_isotropic_3d_patch_gives_five_halvings():
    kernels, strides = plan_dynunet((128, 128, 128))
    assert strides == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert kernels == [(3, 3, 3)] * 6


def test_plan_anisotropic_patch_by_hand():
    # spacing 4 vs 1: z is neither halved nor convolved until in-plane spacing reaches 2 (within 2x of z's 4)
    kernels, strides = plan_dynunet((16, 64, 64), (4.0, 1.0, 1.0))
    assert strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    assert kernels == [(1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)]


def test_plan_2d_and_min_size():
    assert plan_dynunet((256, 96))[1] == [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2), (2, 1), (2, 1)]
    assert plan_dynunet((32, 32), min_size=16)[1] == [(1, 1), (2, 2), (2, 2)]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [(((64, 64), (1.0,)), "one value per axis"), (((64, 64), (1.0, 0.0)), "spacing=0.0 is outside"),
     (((64, 0),), ">= 1")],
)
def test_plan_rejects_bad_arguments(args, pattern):
    with pytest.raises(ConfigError, match=pattern):
        plan_dynunet(*args)


def test_plan_halves_only_even_sizes_so_the_patch_is_a_multiple_of_the_total_stride():
    # MONAI's DynUNet needs inputs divisible by the product of the strides: 100 -> 50 -> 25 stops at the odd 25
    kernels, strides = plan_dynunet((100, 96))
    assert strides == [(1, 1), (2, 2), (2, 2), (1, 2), (1, 2)]
    total = [math.prod(s[axis] for s in strides) for axis in range(2)]
    assert [100 % total[0], 96 % total[1]] == [0, 0]


def test_default_network_matches_the_3d_reference_layout():
    nets = pytest.importorskip("monai.networks.nets")
    with torch.device("meta"):
        model = DynUNet(3, 4, 4)
    assert isinstance(model.net, nets.DynUNet)  # MONAI's own network, under `net`
    assert model.filters == (32, 64, 128, 256, 320, 320)
    assert [(t.name, t.channels, t.stride) for t in model.pdcr_taps()] == [
        ("net.downsamples.1", 128, (4, 4, 4)),
        ("net.downsamples.2", 256, (8, 8, 8)),
    ]
    assert model.pdcr_cross() == [("net.downsamples.1", "net.downsamples.2")]
    assert [c for _, c in model.uafs_points()] == [320, 256, 128, 64, 32]  # BraTS: C = 320, 256, 128, 64, 32
    assert [n for n, _ in model.uafs_points()] == [f"net.upsamples.{j}.conv_block" for j in range(5)]


@pytest.mark.parametrize("dims", [2, 3])
def test_outputs_equal_monai_dynunets_forward_with_the_same_weights(dims):
    nets = pytest.importorskip("monai.networks.nets")
    kernels = [3, (1, 3) if dims == 2 else (1, 3, 3), 3, 3]
    strides = [1, (1, 2) if dims == 2 else (1, 2, 2), 2, 2]
    torch.manual_seed(0)
    reference = nets.DynUNet(
        dims, 2, 3, kernels, strides, strides[1:], filters=(4, 8, 16, 32), deep_supervision=True, deep_supr_num=2
    )
    model = DynUNet(dims, 2, 3, kernel_size=kernels, strides=strides, filters=(4, 8, 16, 32), deep_supervision=2)
    model.net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 2, *(16, 24, 8)[:dims])
    reference.eval(), model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    reference.train(), model.train()
    with torch.no_grad():
        expected = reference(x)  # [B, 1 + n, C, *S]: heads interpolated (nearest) to full size and stacked
        outputs = model(x)  # the heads at their own resolution
    assert len(outputs) == 3 and outputs[1].shape[2:] != x.shape[2:]
    for k, out in enumerate(outputs):
        resized = out if k == 0 else F.interpolate(out, x.shape[2:])
        assert torch.allclose(resized, expected[:, k], atol=1e-5), k


def test_inputs_that_are_not_multiples_of_the_total_stride_are_padded_and_cropped():
    torch.manual_seed(0)
    model = DynUNet(3, 1, 2, patch_size=32, filters=(2, 4, 8, 8)).eval()  # total stride 8
    x = torch.randn(1, 1, 19, 13, 11)
    padded = torch.zeros(1, 1, 24, 16, 16)
    padded[:, :, :19, :13, :11] = x
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, model(padded)[:, :, :19, :13, :11])  # zeros at the end of each axis, cropped back


def test_parameter_count_equals_monai_for_the_default_plan():
    nets = pytest.importorskip("monai.networks.nets")
    kernels, strides = plan_dynunet((128, 128, 128))
    with torch.device("meta"):
        reference = nets.DynUNet(3, 4, 4, kernels, strides, strides[1:], deep_supervision=True, deep_supr_num=3)
        model = DynUNet(3, 4, 4, deep_supervision=3)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_the_stride_description_resolves_to_the_same_modules():
    # LibraryHost on the same MONAI network, asked for the strides of skips 2 and 3 and every decoder stage,
    # finds exactly the modules this host names by hand
    from dragsaw.models.library import LibraryHost

    model = DynUNet(3, 1, 3, patch_size=64, filters=(4, 8, 16, 32, 32), deep_supervision=2)
    strides = model.level_strides()
    described = LibraryHost(model.net, spatial_dims=3, in_channels=1, num_classes=3,
                            encoder_strides=[strides[2], strides[3]], size_multiple=model.size_multiple)
    assert described.pdcr_taps() == model.pdcr_taps()
    assert described.uafs_points() == model.uafs_points()


def test_deep_supervision_outputs_are_at_their_declared_strides():
    torch.manual_seed(0)
    model = DynUNet(
        3, 1, 2, patch_size=(16, 64, 64), spacing=(3.0, 1.0, 1.0), filters=(2, 4, 8, 8, 8), deep_supervision=3
    )
    assert model.strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    x = torch.randn(2, 1, 11, 13, 9)
    outputs = model(x)
    assert model.output_strides() == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    for out, stride in zip(outputs, model.output_strides(), strict=True):
        assert out.shape == (2, 2, *(math.ceil(s / t) for s, t in zip(x.shape[2:], stride)))
    model.eval()
    assert model(x).shape == (2, 2, 11, 13, 9)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"patch_size": 8}, "at least 3 levels"),
        ({"patch_size": (32, 32)}, "exactly 3 entries"),
        ({"kernel_size": [3, 3, 3]}, "kernel_size and strides together"),
        ({"kernel_size": 3, "strides": [1, 2, 2]}, "kernel_size=3 must be a list with one entry"),
        ({"kernel_size": [3, 3, 3], "strides": [1, 2]}, "3 levels but strides has 2"),
        ({"kernel_size": [3, 2, 3], "strides": [1, 2, 2]}, "must be odd"),
        ({"kernel_size": [3, 3, 3], "strides": [2, 2, 2]}, r"strides\[0\]=\(2, 2, 2\) must be 1"),
        ({"patch_size": 32, "filters": (4, 8)}, "one entry per level"),
        ({"patch_size": 32, "pdcr_skips": (1, 2), "deep_supervision": 3}, "use 0..2"),
        ({"patch_size": 32, "pdcr_skips": (1, 1)}, "two different encoder stages"),
        ({"patch_size": 32, "pdcr_skips": (1, -1)}, ">= 0"),
        ({"patch_size": 32, "pdcr_skips": (1, 2), "norm": "layer"}, "norm='layer'"),
    ],
)
def test_invalid_options_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DynUNet(3, 1, 2, **kwargs)


def test_a_shallow_network_builds_but_refuses_taps_it_does_not_have():
    model = DynUNet(3, 1, 2, patch_size=32, filters=(2, 4, 8, 8))  # 4 levels: skips 0..2
    assert [name for name, _ in model.uafs_points()] == [f"net.upsamples.{j}.conv_block" for j in range(3)]
    for method in (model.pdcr_taps, model.pdcr_cross):
        with pytest.raises(ConfigError, match=r"pdcr_skips=\(2, 3\) must name encoder stages in 0..2.*\(1, 2\)"):
            method()
