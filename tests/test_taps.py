"""FeatureTaps, insert_after and receptive_field on unmodified networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dragsaw.taps import FeatureTaps, insert_after, list_tappable, receptive_field
from dragsaw.uafs import UncertaintySelect


def net() -> nn.Module:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 2, 1),
    )


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_collects_named_outputs_with_gradients_and_removes_hooks():
    model = net()
    x = torch.randn(2, 1, 8, 8)
    with FeatureTaps(model, ["0", "2.1"]) as taps:
        y = model(x)
        assert hook_count(model) == 2
        feats = taps.features
        assert feats["0"].shape == (2, 4, 8, 8) and feats["2.1"].shape == (2, 8, 4, 4)
        torch.testing.assert_close(feats["0"], model[0](x))
        feats["2.1"].sum().backward()
        assert model[0][0].weight.grad is not None
        popped = taps.pop()
        assert taps.features == {} and set(popped) == {"0", "2.1"}
    assert hook_count(model) == 0
    assert y.shape == (2, 2, 4, 4)


def test_hooks_removed_after_exception():
    model = net()
    with pytest.raises(RuntimeError):
        with FeatureTaps(model, ["0"]):
            model(torch.randn(2, 3, 8, 8))  # wrong channel count
    assert hook_count(model) == 0


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"no submodule named '2\.2x'.*Did you mean '2\.2'\? dragsaw\.taps"):
        FeatureTaps(net(), ["2.2x"])
    with pytest.raises(ValueError, match="duplicated names"):
        FeatureTaps(net(), ["0", "0"])
    assert "2.1" in list_tappable(net())


def test_tuple_outputs_and_selector():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    model = nn.Sequential(Pair())
    x = torch.ones(1, 1, 2, 2)
    with FeatureTaps(model, ["0"]) as taps:
        model(x)
        assert taps.features["0"].sum() == 8
    with FeatureTaps(model, ["0"], select=lambda out: out[1]) as taps:
        model(x)
        assert taps.features["0"].sum() == 12


def test_insert_after_wraps_without_editing_source():
    model = net()
    x = torch.randn(2, 1, 8, 8)
    block = UncertaintySelect(8)
    wrapped = insert_after(model, "2", block)
    assert model[2] is wrapped and wrapped[1] is block
    keys = model.state_dict().keys()
    assert "2.0.0.weight" in keys and "2.1.head.0.weight" in keys
    with FeatureTaps(model, ["2", "2.0"]) as taps:
        model(x)
        before, after = taps.features["2.0"], taps.features["2"]
    torch.testing.assert_close(after, block(before))
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        insert_after(model, "nope", block)


def test_receptive_field_of_known_network():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, (3, 5), padding=(1, 2)), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
    )
    model.train()
    rf = receptive_field(model, "3", (1, 1, 48, 48))
    assert rf.stride == (2, 2) and rf.size == (8, 12) and rf.center_offset == (0.5, 0.5)
    rf = receptive_field(model, "5", (1, 1, 48, 48))
    assert rf.stride == (4, 4) and rf.size == (12, 16)
    assert model.training  # the probe works on a copy
    with pytest.raises(ValueError, match="reaches the border"):
        receptive_field(model, "5", (1, 1, 8, 8))


def test_receptive_field_3d_dilated():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv3d(2, 2, 3, stride=2, padding=1))
    rf = receptive_field(model, "2", (1, 1, 24, 24, 24))
    assert rf.stride == (2, 2, 2) and rf.size == (7, 7, 7)


def test_receptive_field_ignores_instance_norm_statistics():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
    rf = receptive_field(model, "3", (1, 1, 32, 32))
    assert rf.size == (5, 5) and rf.stride == (1, 1)
    assert isinstance(model[1], nn.InstanceNorm2d)  # the model itself is untouched


# ---------------------------------------------------------------------------------------------------------------
# suggest


class TinyUNet(nn.Module):
    """Stem (s1) -> two strided stages (s2, s4) -> two transposed-conv decoder stages (s2, s1) -> 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16))
        self.act = nn.ReLU()  # shared: called after down2 and after dec1
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = nn.Conv2d(16, 8, 3, padding=1)
        self.up0 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dec0 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        s0 = self.stem(x)
        s1 = self.down1(s0)
        x = self.act(self.down2(s1))
        x = self.act(self.dec1(torch.cat([self.up1(x), s1], 1)))
        x = self.dec0(torch.cat([self.up0(x), s0], 1))
        return self.head(x)


def test_suggest_lists_the_maps_with_strides_channels_and_roles_in_order():
    from dragsaw.taps import suggest

    maps = suggest(TinyUNet(), (1, 1, 32, 24))
    assert [(m.name, m.channels, m.stride, m.role) for m in maps] == [
        ("stem.0", 4, (1, 1), "encoder"),
        ("stem.1", 4, (1, 1), "encoder"),
        ("stem", 4, (1, 1), "encoder"),
        ("down1.0", 8, (2, 2), "encoder"),
        ("down1.1", 8, (2, 2), "encoder"),
        ("down1", 8, (2, 2), "encoder"),
        ("down2.0", 16, (4, 4), "bottleneck"),
        ("down2.1", 16, (4, 4), "bottleneck"),
        ("down2", 16, (4, 4), "bottleneck"),
        ("up1", 8, (2, 2), "decoder"),
        ("dec1", 8, (2, 2), "decoder"),
        ("act", 8, (2, 2), "decoder"),  # its last call
        ("up0", 4, (1, 1), "decoder"),
        ("dec0", 4, (1, 1), "decoder"),
        ("head", 2, (1, 1), "decoder"),
    ]
    assert [m.order for m in maps] == list(range(len(maps)))
    assert all(m.size == (32 // m.stride[0], 24 // m.stride[1]) for m in maps)
    flags = {m.name: (m.calls, m.inputs, m.modified_in_place, m.spans_strides, m.candidate) for m in maps}
    assert flags["act"] == (2, 1, False, False, False)  # called twice (at strides 4 and 2): not a candidate
    assert flags["down1.0"] == (1, 1, True, False, False)  # changed afterwards by the in-place ReLU
    assert flags["down1"] == (1, 1, False, False, True)
    assert {m.name: m.input_stride for m in maps if m.name in ("up1", "down1", "stem")} == {
        "stem": (1, 1), "down1": (1, 1), "up1": (4, 4)}


def test_suggest_restores_modes_removes_hooks_and_changes_nothing():
    from dragsaw.taps import suggest

    model = TinyUNet().train()
    model.down2.eval()  # mixed modes come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for on_meta in (True, False):
        suggest(model, (2, 1, 16, 16), on_meta=on_meta)
        assert model.training and not model.down2.training and model.stem.training
        assert hook_count(model) == 0
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included
        assert all(p.grad is None and p.device.type == "cpu" for p in model.parameters())


def test_suggest_falls_back_to_a_real_forward_when_meta_tensors_cannot_run():
    from dragsaw.taps import suggest

    class Scaled(TinyUNet):  # .item() has no meta implementation
        def forward(self, x):
            return super().forward(x) * (1.0 + float(self.head.weight.abs().max().item()) * 0)

    model = Scaled()
    fields = lambda maps: [(m.name, m.channels, m.stride, m.role, m.calls) for m in maps]  # noqa: E731
    assert fields(suggest(model, (1, 1, 16, 16))) == fields(suggest(model, (1, 1, 16, 16), on_meta=False))
    assert fields(suggest(model, (1, 1, 16, 16)))[:3] == fields(suggest(TinyUNet(), (1, 1, 16, 16)))[:3]


def test_suggest_without_whole_strides_and_with_global_pooling():
    from dragsaw.taps import suggest

    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    maps = suggest(model, (1, 1, 9, 8))  # 9 x 8 -> 5 x 4: no whole stride
    assert [(m.name, m.stride, m.role) for m in maps] == [("0", None, None), ("1", (9, 8), None)]
    # a global pool is listed without a role, and it is not "the coarsest map" that would make the conv an encoder
    maps = suggest(model[:2], (1, 1, 8, 8))
    assert [(m.name, m.stride, m.role) for m in maps] == [("0", (2, 2), "bottleneck"), ("1", (8, 8), None)]


def test_suggest_measures_receptive_fields_of_candidates_only():
    from dragsaw.taps import suggest

    maps = {m.name: m for m in suggest(TinyUNet(), (1, 1, 48, 48), receptive_fields=True)}
    assert maps["stem"].receptive_field.size == (3, 3) and maps["stem"].receptive_field.stride == (1, 1)
    assert maps["down1"].receptive_field.size == (5, 5) and maps["down1"].receptive_field.stride == (2, 2)
    assert maps["down1.0"].receptive_field is None and maps["act"].receptive_field is None  # not candidates


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((1, 1), r"full input shape \(B, C, \*S\)"),
        ((1, 1, 16, 0), "positive ints"),
        ("1x1x16x16", "must be a sequence"),
        ((1, 3, 16, 16), r"TinyUNet did not run on an input of shape \(1, 3, 16, 16\).*channels"),
    ],
)
def test_suggest_reports_input_shapes_the_network_cannot_run(shape, pattern):
    from dragsaw.taps import suggest

    model = TinyUNet()
    with pytest.raises(ValueError, match=pattern):
        suggest(model, shape)
    assert hook_count(model) == 0 and model.training


def test_format_suggestions_prints_one_line_per_map():
    from dragsaw.taps import format_suggestions, suggest

    maps = suggest(TinyUNet(), (1, 1, 16, 16))
    lines = format_suggestions(maps).splitlines()
    assert lines[0].split() == ["order", "name", "role", "channels", "stride", "size", "rf", "notes"]
    assert len(lines) == len(maps) + 1
    row = next(line for line in lines if " act " in line)
    assert row.split() == ["11", "act", "decoder", "8", "2x2", "8x8", "-", "calls=2"]
    assert "* down1 " in format_suggestions(maps) and "  down1.0 " in format_suggestions(maps)
    only = format_suggestions(maps, candidates_only=True)
    assert "down1.0" not in only and "* down1 " in only
    assert str(maps[0]).split() == ["0", "*", "stem.0", "encoder", "4", "1x1", "16x16", "-"]
