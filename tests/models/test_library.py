"""Hosts described by strides: LibraryHost's resolution on a hand-made network, and the MONAI hosts (monai_unet,
segresnet, swinunetr) with the method's placement, built alone, through build_network and trained by the CLI."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import build_network
from dragsaw.engine.task import SegmentationTask
from dragsaw.errors import ConfigError
from dragsaw.models import LibraryHost, create_model, plan_topology
from dragsaw.uafs import UncertaintySelect

from _cli import gray_folder, run_cli, tiny_task, train_argv


class Coarse2Fine(nn.Module):
    """SegResNet-like: strided stages, each decoder step a 1x1 conv *before* its upsampling, and a head
    ``norm -> ReLU -> 1x1 conv``, so that "the last map of a stride" needs the rules for both."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.enc1 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.Upsample(scale_factor=2)) for c in (32, 16, 8)
        )
        self.dec = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in (16, 8, 4))
        self.head = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, num_classes, 1))

    def forward(self, x):
        skips = [self.stem(x)]
        skips.append(self.enc1(skips[-1]))
        skips.append(self.enc2(skips[-1]))
        x = self.enc3(skips[-1])
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(up(x) + skip)
        return self.head(x)


def library(net: nn.Module | None = None, **kwargs) -> LibraryHost:
    options = {"encoder_strides": (2, 4), "decoder_strides": (2, 1), "uafs_strides": "all", "size_multiple": 8}
    return LibraryHost(net or Coarse2Fine(), spatial_dims=2, in_channels=1, num_classes=2, **{**options, **kwargs})


def test_strides_resolve_to_the_last_module_of_each_stride_down_and_up():
    host = library()
    assert [(t.name, t.channels, t.stride, t.role) for t in host.pdcr_taps()] == [
        ("net.enc1", 8, (2, 2), "encoder"),
        ("net.enc2", 16, (4, 4), "encoder"),
        ("net.dec.1", 8, (2, 2), "decoder"),  # not net.up.2.0, the 1x1 conv that follows it at stride 2
        ("net.dec.2", 4, (1, 1), "decoder"),  # not the head's norm or ReLU
    ]
    assert host.pdcr_cross() == [("net.enc1", "net.enc2")]
    assert host.uafs_points() == [("net.dec.0", 16), ("net.dec.1", 8), ("net.dec.2", 4)]
    # the coarsest stride is on the way down too: the last stage there, not the 1x1 conv of the first upsampling
    assert [t.name for t in library(encoder_strides=[8], decoder_strides=[]).pdcr_taps()] == ["net.enc3"]
    assert library(uafs_strides=[[4, 4], 1]).uafs_points() == [("net.dec.0", 16), ("net.dec.2", 4)]
    assert library(cross=False).pdcr_cross() == []


def test_a_stride_the_network_lacks_is_reported_when_the_description_is_asked_for():
    host = library(encoder_strides=(2, 16), uafs_strides=[32])  # builds: PDCR or UAFS may be off
    message = r"encoder_strides asks for stride \[16, 16\].*encoder strides \[\[1, 1\], \[2, 2\], \[4, 4\], \[8, 8\]\]"
    with pytest.raises(ConfigError, match=message + r".*decoder strides \[\[4, 4\], \[2, 2\], \[1, 1\]\]"):
        host.pdcr_taps()
    with pytest.raises(ConfigError, match="encoder_strides asks for stride"):
        host.pdcr_cross()
    with pytest.raises(ConfigError, match=r"uafs_strides asks for stride \[32, 32\].*dragsaw.taps.suggest"):
        host.uafs_points()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"uafs_strides": "every"}, "list of strides or 'all'"),
        ({"encoder_strides": [2, 2]}, r"lists the strides \[\(2, 2\)\] more than once"),
        ({"decoder_strides": [[2, 2, 2]]}, "exactly 2 entries"),
        ({"cross": "yes"}, "cross must be true or false"),
        ({"probe_size": (12, 12)}, r"probe forward on an input \[1, 1, 12, 12\] failed"),  # 12 -> 6 -> 3 -> 2 -> 4
    ],
)
def test_bad_descriptions_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        library(**kwargs)


def test_the_wrapped_network_is_not_edited_and_inputs_of_any_size_run():
    torch.manual_seed(0)
    net = Coarse2Fine().train()
    net.head.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    host = library(net)
    assert host.net is net and net.training and not net.head.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    host.eval()
    x = torch.randn(2, 1, 21, 13)  # padded to 24 x 16 (multiples of 8), cropped back
    padded = torch.zeros(2, 1, 24, 16)
    padded[:, :, :21, :13] = x
    with torch.no_grad():
        out = host(x)
        assert out.shape == (2, 2, 21, 13)
        assert torch.equal(out, net(padded)[:, :, :21, :13])
        assert torch.equal(host(padded), net(padded))  # multiples go through unchanged


# ------------------------------------------------------------------ the MONAI hosts

SMALL = {  # small but complete configurations: the method's strides all exist
    "monai_unet": {"channels": (4, 8, 16, 32, 32), "strides": (2, 2, 2, 2), "num_res_units": 1},
    "segresnet": {"init_filters": 4, "num_groups": 2},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 4},
}
# input sizes: multiples of the total stride (16, 8 and 32) whose coarsest map has more than one location
SHAPE = {("monai_unet", 2): (32, 48), ("monai_unet", 3): (32, 16, 16), ("segresnet", 2): (16, 24),
         ("segresnet", 3): (16, 16, 8), ("swinunetr", 2): (64, 32), ("swinunetr", 3): (32, 32, 64)}
UNET_DOWN = ["net.model.0", "net.model.1.submodule.0", "net.model.1.submodule.1.submodule.0"]
UNET_UP = ["net.model.1.submodule.1.submodule.1.submodule.2", "net.model.1.submodule.1.submodule.2",
           "net.model.1.submodule.2"]  # strides 8, 4, 2 (the last up layer is the output head)
# (name, dims) -> (encoder taps, decoder taps, UAFS points); strides 2D: encoder (2, 4), decoder the two finest
# stages; 3D: encoder (4, 8); UAFS after every decoder stage (2D: below full resolution)
PLACES = {
    ("monai_unet", 2): (UNET_DOWN[:2], UNET_UP[1:], UNET_UP),
    ("monai_unet", 3): (UNET_DOWN[1:], [], UNET_UP),
    ("segresnet", 2): (["net.down_layers.1", "net.down_layers.2"], ["net.up_layers.1", "net.up_layers.2"],
                       ["net.up_layers.0", "net.up_layers.1"]),
    ("segresnet", 3): (["net.down_layers.2", "net.down_layers.3"], [],
                       ["net.up_layers.0", "net.up_layers.1", "net.up_layers.2"]),
    ("swinunetr", 2): (["net.encoder2", "net.encoder3"], ["net.decoder2.conv_block", "net.decoder1.conv_block"],
                       [f"net.decoder{i}.conv_block" for i in (5, 4, 3, 2)]),
    ("swinunetr", 3): (["net.encoder3", "net.encoder4"], [],
                       [f"net.decoder{i}.conv_block" for i in (5, 4, 3, 2, 1)]),
}


@pytest.mark.parametrize(("name", "dims"), list(PLACES), ids=[f"{n}-{d}d" for n, d in PLACES])
def test_monai_hosts_put_pdcr_and_uafs_where_the_method_does(name, dims):
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims, in_channels=1, num_classes=2, **SMALL[name])
    encoder, decoder, points = PLACES[(name, dims)]
    taps = model.pdcr_taps()
    assert [t.name for t in taps] == encoder + decoder
    strides = [2, 4] if dims == 2 else [4, 8]
    assert [t.stride for t in taps if t.role == "encoder"] == [(s,) * dims for s in strides]
    assert [t.role for t in taps] == ["encoder"] * 2 + ["decoder"] * len(decoder)
    if dims == 2:  # the two finest decoder stages, coarse first
        finest = [t.stride[0] for t in taps if t.role == "decoder"]
        assert finest == sorted(finest, reverse=True) and len(finest) == 2
    assert model.pdcr_cross() == [tuple(encoder)]
    assert [n for n, _ in model.uafs_points()] == points
    # the declared channels and strides are the real ones; odd sizes run as well (padded, cropped)
    x = torch.randn(1, 1, *SHAPE[(name, dims)])
    odd = [s - 3 for s in x.shape[2:]]
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o))
               for n in {t.name for t in taps} | set(points)]
    model.eval()
    with torch.no_grad():
        out = model(x)
        for h in handles:
            h.remove()
        assert model(torch.randn(1, 1, *odd)).shape == (1, 2, *odd)
    assert out.shape == (1, 2, *x.shape[2:])
    for t in taps:
        assert seen[t.name].shape == (1, t.channels, *(s // st for s, st in zip(x.shape[2:], t.stride))), t
    for n, c in model.uafs_points():
        assert seen[n].shape[1] == c


@pytest.mark.parametrize(
    ("name", "options", "size", "multiple"),
    [("monai_unet", {"strides": [2, 2, 3]}, [36, 18], 12), ("segresnet", {}, [48, 44], 8),
     ("swinunetr", {}, [64, 48], 32)],
)
def test_planning_needs_input_sizes_that_are_multiples_of_the_total_stride(name, options, size, multiple):
    with pytest.raises(ConfigError, match=re.escape(f"input_size={size} is not a multiple of {[multiple] * 2}")):
        plan_topology(name, spatial_dims=2, input_size=size, options=options)
    assert plan_topology(name, spatial_dims=2, input_size=[multiple * 2] * 2, options=options) == {}


def test_monai_options_are_checked():
    with pytest.raises(ConfigError, match=r"strides=\[2, 2\] must have len\(channels\) - 1 = 3"):
        create_model("monai_unet", in_channels=1, num_classes=2, channels=(4, 8, 16, 32), strides=(2, 2))
    with pytest.raises(ConfigError, match="init_filters=6 must be a multiple of num_groups=4"):
        create_model("segresnet", in_channels=1, num_classes=2, init_filters=6, num_groups=4)
    with pytest.raises(ConfigError, match="swinunetr: MONAI refused the options"):
        create_model("swinunetr", in_channels=1, num_classes=2, feature_size=10)
    with pytest.raises(ConfigError, match="no option 'chanels'"):
        create_model("monai_unet", in_channels=1, num_classes=2, chanels=(4, 8))


# ------------------------------------------------------------------ through the engine

def _config(name: str, dims: int, *extra: str):
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL[name].items()}
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}"
    if dims == 2:
        side = 64 if name == "swinunetr" else 32
        base = apply_overrides(load_preset("folder", "cpu"), [
            f"data.input_size=[{side}, {side}]", "pdcr.layers=null", "pdcr.cross_layers=null",
            "pdcr.encoder_samples=[16, 8]", "pdcr.decoder_samples=[8, 4]", "pdcr.cross_samples=8",
            "pdcr.ramp_epochs=0"])  # the cpu profile ramps PDCR up from 0: no gradient at step 0
    else:
        size = "[64, 64, 32]" if name == "swinunetr" else "[32, 32, 16]"
        base = apply_overrides(load_preset("decathlon", "cpu"), [
            f"data.input_size={size}", "data.num_classes=3", "data.target_spacing=[1.0, 1.0, 2.5]",
            "pdcr.encoder_samples=[8, 8]", "pdcr.cross_samples=8"])
    return apply_overrides(base, [f"model.name={name}", f"model.options={flow}", *extra])


@pytest.mark.parametrize(("name", "dims"), list(PLACES), ids=[f"{n}-{d}d" for n, d in PLACES])
def test_a_training_step_reaches_the_pdcr_projections_and_the_uafs_heads(name, dims):
    config = _config(name, dims)
    torch.manual_seed(0)
    network = build_network(config, in_channels=1)
    encoder, decoder, points = PLACES[(name, dims)]
    assert network.tap_names == encoder + decoder and network.uafs_points == points
    assert network.pdcr.cross_layers == [tuple(encoder)]
    task = SegmentationTask.from_config(config, in_channels=1)
    task.log_dict = lambda *args, **kwargs: None
    task.log = lambda *args, **kwargs: None
    size = config.data.input_size
    classes = config.data.num_classes
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(2, 1, *size, generator=g),
             "label": torch.randint(0, classes, (2, *size), generator=g)}
    task.train()
    loss = task.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    projections = list(task.pdcr.named_parameters())
    assert projections and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in projections), [
        n for n, p in projections if p.grad is None or not p.grad.abs().sum() > 0]
    blocks = [m for m in task.model.modules() if isinstance(m, UncertaintySelect)]
    assert len(blocks) == len(points)
    for block in blocks:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert all(p.grad is not None for p in task.model.net.parameters())  # the host learns


CLI = {
    "monai_unet": "{channels: [4, 8, 16, 32, 32], strides: [2, 2, 2, 2], num_res_units: 1}",
    "segresnet": "{init_filters: 4, num_groups: 2}",
    "swinunetr": "{feature_size: 12, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], window_size: 4}",
}


@pytest.fixture(scope="module")
def folder2d(tmp_path_factory):
    return gray_folder(tmp_path_factory.mktemp("gray") / "data", n_train=8, n_test=2, size=32)


@pytest.fixture(scope="module")
def task3d(tmp_path_factory):
    return tiny_task(tmp_path_factory.mktemp("msd") / "Task90", shape=(40, 40, 24))


def _check_run(run, name: str, dims: int) -> None:
    """The run logged a PDCR term per tap and the cross term, and its checkpoint holds a UAFS block per point."""
    encoder, decoder, points = PLACES[(name, dims)]
    header = (run / "log.csv").read_text().splitlines()[0].split(",")
    for tap in encoder + decoder:
        assert f"train/pdcr/layer/{tap}_step" in header, tap
    assert f"train/pdcr/cross/{encoder[0]}~{encoder[1]}_step" in header
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert {p for p in points if f"model.{p}.1.head.0.weight" in state} == set(points)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] * (n == "swinunetr")) for n in CLI])
def test_cli_trains_a_monai_host_in_2d(name, folder2d, tmp_path):
    side = 64 if name == "swinunetr" else 32
    result = run_cli(train_argv(2, folder2d, tmp_path / "run", f"model.name={name}", f"model.options={CLI[name]}",
                                f"data.input_size=[{side}, {side}]", "train.batch_size=2"))
    assert result.code == 0, result.err
    _check_run(tmp_path / "run", name, 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI))
def test_cli_trains_a_monai_host_in_3d(name, task3d, tmp_path):
    size = "[64, 64, 32]" if name == "swinunetr" else "[32, 32, 16]"
    result = run_cli(train_argv(3, task3d, tmp_path / "run", f"model.name={name}", f"model.options={CLI[name]}",
                                f"data.input_size={size}"))
    assert result.code == 0, result.err
    _check_run(tmp_path / "run", name, 3)


def test_parameter_counts_grow_with_the_options():
    # a cheap guard that the options reach MONAI's constructors
    small = create_model("monai_unet", in_channels=1, num_classes=2, **SMALL["monai_unet"])
    wide = create_model("monai_unet", in_channels=1, num_classes=2, **{**SMALL["monai_unet"],
                                                                      "channels": (8, 16, 32, 64, 64)})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wide) > 3 * count(small)
    assert math.prod(small.strides) == 16 and small.size_multiple == (16, 16)
