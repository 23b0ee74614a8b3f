"""Pretrained weights from local files: the Cadene/torchvision key remapping (checked against synthetic state dicts
built here from those layouts' own key conventions) and the error messages for files that do not fit."""

from __future__ import annotations

import pytest
import torch

from dragsaw.errors import ConfigError
from dragsaw.models import DeepLabV3Plus
from dragsaw.models.weights import load_backbone_weights

WIDTH = 0.125  # every Xception/ResNet channel count is an integer at this width
MIDDLE = 10  # two more middle blocks than the ImageNet Xception: both must come from its block11


def _c(n: int) -> int:
    return int(n * WIDTH)


def _bn(state: dict, prefix: str, channels: int, gen: torch.Generator) -> None:
    state[f"{prefix}.weight"] = torch.randn(channels, generator=gen)
    state[f"{prefix}.bias"] = torch.randn(channels, generator=gen)
    state[f"{prefix}.running_mean"] = torch.randn(channels, generator=gen)
    state[f"{prefix}.running_var"] = torch.rand(channels, generator=gen) + 0.5


def cadene_xception(in_channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Cadene ``pretrainedmodels`` Xception state dict (random values), pointwise weights stored as [out, in]."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    state["conv1.weight"] = torch.randn(_c(32), in_channels, 3, 3, generator=gen)
    _bn(state, "bn1", _c(32), gen)
    state["conv2.weight"] = torch.randn(_c(64), _c(32), 3, 3, generator=gen)
    _bn(state, "bn2", _c(64), gen)
    # block: (in, out, number of separable convs, starts with ReLU, grows first, has a strided skip)
    blocks = {1: (64, 128, 2, False, True, True), 2: (128, 256, 2, True, True, True)}
    blocks[3] = (256, 728, 2, True, True, True)
    blocks.update({k: (728, 728, 3, True, True, False) for k in range(4, 12)})
    blocks[12] = (728, 1024, 2, True, False, True)
    for k, (cin, cout, n, relu_first, grow_first, skip) in blocks.items():
        cin, cout = _c(cin), _c(cout)
        if skip:
            state[f"block{k}.skip.weight"] = torch.randn(cout, cin, 1, 1, generator=gen)
            _bn(state, f"block{k}.skipbn", cout, gen)
        chans = [cin] + [cout if grow_first else cin] * (n - 1) + [cout]
        for i in range(n):
            j = 3 * i + (1 if relu_first else 0)  # rep = [ReLU, sep, BN] * n
            state[f"block{k}.rep.{j}.conv1.weight"] = torch.randn(chans[i], 1, 3, 3, generator=gen)
            state[f"block{k}.rep.{j}.pointwise.weight"] = torch.randn(chans[i + 1], chans[i], generator=gen)
            _bn(state, f"block{k}.rep.{j + 1}", chans[i + 1], gen)
    for name, bn, cin, cout in (("conv3", "bn3", 1024, 1536), ("conv4", "bn4", 1536, 2048)):
        state[f"{name}.conv1.weight"] = torch.randn(_c(cin), 1, 3, 3, generator=gen)
        state[f"{name}.pointwise.weight"] = torch.randn(_c(cout), _c(cin), generator=gen)
        _bn(state, bn, _c(cout), gen)
    state["fc.weight"] = torch.randn(1000, _c(2048), generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def torchvision_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 state dict (random values) at width ``WIDTH``."""
    gen = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": torch.randn(_c(64), 3, 7, 7, generator=gen)}
    _bn(state, "bn1", _c(64), gen)
    cin = _c(64)
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        planes = _c(planes)
        for i in range(2):
            prefix = f"layer{layer}.{i}"
            state[f"{prefix}.conv1.weight"] = torch.randn(planes, cin, 3, 3, generator=gen)
            _bn(state, f"{prefix}.bn1", planes, gen)
            state[f"{prefix}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=gen)
            _bn(state, f"{prefix}.bn2", planes, gen)
            if i == 0 and layer > 1:
                state[f"{prefix}.downsample.0.weight"] = torch.randn(planes, cin, 1, 1, generator=gen)
                _bn(state, f"{prefix}.downsample.1", planes, gen)
            cin = planes
    state["fc.weight"] = torch.randn(1000, cin, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def _save(tmp_path, state, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _xception(seed=0, **kwargs) -> DeepLabV3Plus:
    torch.manual_seed(seed)
    return DeepLabV3Plus(2, 3, 2, width=WIDTH, middle_blocks=MIDDLE, **kwargs)


CADENE_TO_OWN = [
    ("conv1.weight", "conv1.conv.weight"),
    ("bn1.running_var", "conv1.norm.running_var"),
    ("bn2.bias", "conv2.norm.bias"),
    ("block1.rep.0.conv1.weight", "block1.units.0.conv.depthwise.weight"),
    ("block1.rep.4.bias", "block1.units.1.norm.bias"),
    ("block1.skip.weight", "block1.skip.conv.weight"),
    ("block2.rep.1.pointwise.weight", "block2.units.0.conv.pointwise.weight"),
    ("block2.rep.5.weight", "block2.units.1.norm.weight"),
    ("block3.skipbn.running_mean", "block3.skip.norm.running_mean"),
    ("block4.rep.7.conv1.weight", "middle.0.units.2.conv.depthwise.weight"),
    ("block11.rep.2.weight", "middle.7.units.0.norm.weight"),
    ("block11.rep.4.pointwise.weight", "middle.8.units.1.conv.pointwise.weight"),
    ("block11.rep.8.running_var", "middle.9.units.2.norm.running_var"),
    ("block12.rep.1.conv1.weight", "exit_block.units.0.conv.depthwise.weight"),
    ("block12.rep.4.pointwise.weight", "exit_block.units.1.conv.pointwise.weight"),
    ("block12.skip.weight", "exit_block.skip.conv.weight"),
    ("conv3.conv1.weight", "conv3.conv.depthwise.weight"),
    ("bn3.weight", "conv3.norm.weight"),
    ("bn3.weight", "conv4.norm.weight"),
    ("conv4.pointwise.weight", "conv5.conv.pointwise.weight"),
    ("bn4.running_mean", "conv5.norm.running_mean"),
]
NOT_IN_CADENE = [
    "block1.units.2.conv.depthwise.weight",  # the aligned Xception's strided unit replaces a max pool
    "exit_block.units.2.conv.pointwise.weight",
    "middle.3.units.1.conv.norm.weight",  # norm inside the separable conv
    "conv4.conv.depthwise.weight",
]


def test_cadene_xception_is_remapped_as_in_the_reference(tmp_path):
    source = cadene_xception()
    model = _xception(seed=1, weights=_save(tmp_path, source))
    fresh = _xception(seed=1)
    own = model.backbone.state_dict()
    for src, dst in CADENE_TO_OWN:
        assert torch.equal(own[dst], source[src].reshape(own[dst].shape)), (src, dst)
    for key in NOT_IN_CADENE:
        assert torch.equal(own[key], fresh.backbone.state_dict()[key]), key
    for key, value in fresh.state_dict().items():
        if not key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key
    model.eval()  # random N(0, 1) weights overflow through 14 blocks, so only the shape is meaningful here
    assert model(torch.randn(1, 3, 33, 21)).shape == (1, 2, 33, 21)


def test_load_backbone_weights_reports_the_keys_left_at_init(tmp_path):
    kept = load_backbone_weights(_xception().backbone, _save(tmp_path, cadene_xception()), "cadene")
    assert set(NOT_IN_CADENE) <= set(kept)
    assert not {dst for _, dst in CADENE_TO_OWN} & set(kept)
    assert not any(key.endswith("num_batches_tracked") for key in kept)


def test_cadene_file_that_lacks_or_adds_keys_is_listed(tmp_path):
    source = cadene_xception()
    del source["block5.rep.4.pointwise.weight"]
    source["block13.rep.1.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError) as info:
        _xception(weights=_save(tmp_path, source), weights_layout="cadene")
    message = str(info.value)
    assert "1 missing keys: ['block5.rep.4.pointwise.weight']" in message
    assert "1 unexpected keys: ['block13.rep.1.conv1.weight']" in message
    assert "weights.pth" in message and "cadene layout" in message


def test_cadene_weights_do_not_fit_a_3d_or_wider_network(tmp_path):
    path = _save(tmp_path, cadene_xception())
    expected = r"shape mismatches: \['conv1.weight: file \(4, 3, 3, 3\) vs model \(4, 3, 3, 3, 3\)"
    with pytest.raises(ConfigError, match=expected):
        DeepLabV3Plus(3, 3, 2, width=WIDTH, middle_blocks=MIDDLE, weights=path)
    with pytest.raises(ConfigError, match="shape mismatches"):
        DeepLabV3Plus(2, 3, 2, width=2 * WIDTH, middle_blocks=MIDDLE, weights=path)


def test_torchvision_resnet_is_loaded_with_the_stem_renamed(tmp_path):
    source = torchvision_resnet18()
    torch.manual_seed(0)
    model = DeepLabV3Plus(2, 3, 2, backbone="resnet18", width=WIDTH, weights=_save(tmp_path, source))
    own = model.backbone.state_dict()
    assert torch.equal(own["stem.conv.weight"], source["conv1.weight"])
    assert torch.equal(own["stem.norm.running_mean"], source["bn1.running_mean"])
    for key, value in source.items():
        if key.startswith("layer"):
            assert torch.equal(own[key], value), key
    layout_keys = {k for k in source if not k.startswith("fc.")}
    assert len(layout_keys) == len([k for k in own if not k.endswith("num_batches_tracked")])


def test_dragsaw_layout_round_trip_loads_only_the_backbone(tmp_path):
    source = _xception(seed=0)
    path = _save(tmp_path, source.backbone.state_dict())
    loaded, fresh = _xception(seed=1, weights=path), _xception(seed=1)
    for key, value in loaded.state_dict().items():
        reference = source.state_dict()[key] if key.startswith("backbone.") else fresh.state_dict()[key]
        assert torch.equal(value, reference), key


def test_dragsaw_layout_errors_name_missing_unexpected_and_mismatched_keys(tmp_path):
    state = _xception().backbone.state_dict()
    del state["conv2.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ConfigError) as info:
        _xception(weights=_save(tmp_path, state))
    message = str(info.value)
    assert "1 missing keys: ['conv2.conv.weight']" in message
    assert "1 unexpected keys: ['extra.weight']" in message
    assert "conv1.conv.weight: file (1, 1, 1, 1) vs model (4, 3, 3, 3)" in message


def test_unreadable_or_missing_files_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "xception.pth"
    with pytest.raises(ConfigError, match=r"weights file '.*nowhere/xception.pth' does not exist.*never downloads"):
        _xception(weights=missing)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"notes.pth' could not be read as a tensor state dict"):
        _xception(weights=text)
    nested = _save(tmp_path, {"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, "nested.pth")
    expected = r"not a flat dict of tensors \(non-tensor entries: \['state_dict', 'epoch'\]\)"
    with pytest.raises(ConfigError, match=expected):
        _xception(weights=nested)


def test_a_layout_of_the_other_backbone_family_is_refused(tmp_path):
    path = _save(tmp_path, torchvision_resnet18())
    with pytest.raises(ConfigError, match=r"weights_layout='cadene' does not apply to the ResNet backbone"):
        DeepLabV3Plus(2, 3, 2, backbone="resnet18", width=WIDTH, weights=path, weights_layout="cadene")
