"""Network assembly from a configuration: UAFS insertion points, PDCR taps, weights and errors."""

from __future__ import annotations

import pytest
import torch

from dragsaw.config import apply_overrides, load_preset
from dragsaw.engine import build_network
from dragsaw.errors import ConfigError
from dragsaw.taps import FeatureTaps
from dragsaw.uafs import UncertaintySelect


def cfg(*overrides):
    return apply_overrides(load_preset("folder", "cpu"), ["model.options.channels=[4, 8, 16, 32]", *overrides])


def test_cpu_profile_taps_the_deeper_encoder_stages_with_a_cross_term():
    net = build_network(cfg(), in_channels=3)  # the cpu profile's PDCR placement (chosen on validation data)
    assert net.pdcr.layer_weights == {"encoder.2": 0.1, "encoder.3": 0.1}
    assert net.strides == {"encoder.2": (4, 4), "encoder.3": (8, 8)}
    assert net.pdcr.samples == {"encoder.2": 64, "encoder.3": 32}
    assert net.pdcr.cross_layers == [("encoder.2", "encoder.3")]
    assert net.pdcr.embedding == "mlp"


def test_full_model_has_uafs_at_declared_points_and_pdcr_on_declared_taps():
    net = build_network(cfg("pdcr.layers=null", "pdcr.cross_layers=null"), in_channels=3)
    blocks = {n for n, m in net.model.named_modules() if isinstance(m, UncertaintySelect)}
    assert blocks == {f"{p}.1" for p in net.uafs_points} and len(blocks) == 2  # decoder stages below full res
    assert net.pdcr is not None
    assert net.pdcr.layer_weights == {"encoder.1": 0.1, "encoder.2": 0.1, "decoder.1": 0.01, "decoder.2": 0.01}
    assert net.pdcr.samples == {"encoder.1": 64, "encoder.2": 32, "decoder.1": 32, "decoder.2": 8}
    assert net.pdcr.cross_layers == [("encoder.1", "encoder.2")]
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 2, (2, 64, 64))
    with FeatureTaps(net.model, net.tap_names) as taps:
        logits = net.model(x)
        out = net.pdcr(taps.pop(), labels, net.strides)
    assert logits.shape == (2, 2, 64, 64) and torch.isfinite(out.total)


def test_switches_and_overrides():
    base = build_network(cfg("pdcr.enabled=false", "uafs.enabled=false"), in_channels=1)
    assert base.pdcr is None and base.uafs_points == []
    assert not any(isinstance(m, UncertaintySelect) for m in base.model.modules())
    custom = build_network(cfg("pdcr.layers={encoder.1: encoder}", "pdcr.cross_layers=null", "pdcr.encoder_weight=0.5", "uafs.points=[decoder.0]",
                               "uafs.branches=3", "uafs.aux_weight=0"), in_channels=1)
    assert custom.pdcr.layer_weights == {"encoder.1": 0.5} and custom.pdcr.cross_layers == []
    assert custom.uafs_points == ["decoder.0"] and custom.model.get_submodule("decoder.0.1").branches == 3


@pytest.mark.parametrize(
    "override,match",
    [
        ("uafs.points=[encoder.9]", "uafs.points names 'encoder.9'"),
        ("pdcr.layers={enc.1: encoder}", "not a submodule"),
        ("pdcr.cross_layers=[[encoder.1, decoder.9]]", "untapped layers"),
        ("model.name=unett", "unett"),
    ],
)
def test_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        build_network(cfg(override), in_channels=1)


@pytest.mark.parametrize("dims", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3D: ~20 s
def test_channels_last_task_computes_the_same_step_as_channels_first(dims):
    from dragsaw.engine import SegmentationTask

    if dims == 2:
        config, size = cfg(), (64, 64)  # the cpu profile's 64 samples of encoder.2 need a 16 x 16 grid
    else:
        config, size = load_preset("decathlon", "cpu"), (48, 48, 32)
        config = apply_overrides(config, [f"data.input_size={list(size)}", "data.num_classes=3", "data.target_spacing=[1.0, 1.0, 2.5]",
                                          "model.options.base_filters=4", "model.options.max_filters=16"])
    torch.manual_seed(0)
    # float64: the two memory orders sum in different orders, so float32 gradients may differ by a few percent of a
    # tensor's largest entry on some CPUs (seen 1.2% on an AMD EPYC, batch-norm weights of the 3D host); in float64
    # the same reordering moves results by ~1e-13 relative, so the tolerances below test the layout, not the kernels.
    first = SegmentationTask.from_config(apply_overrides(config, ["train.channels_last=false"]), in_channels=2).double()
    last = SegmentationTask.from_config(config, in_channels=2).double()
    last.load_state_dict(first.state_dict())
    for task in (first, last):
        task.log_dict = task.log = lambda *a, **k: None
        task.train()
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    convs = [m for m in last.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(m.weight.is_contiguous(memory_format=fmt) for m in convs if m.kernel_size[0] > 1)
    batch = {"image": torch.randn(2, 2, *size, dtype=torch.float64),
             "label": torch.randint(0, config.data.num_classes, (2, *size))}
    losses = [task.training_step(batch, 0) for task in (first, last)]
    assert losses[0].dtype == torch.float64
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(first.named_parameters(), last.named_parameters()):
        scale = a.grad.abs().max().item()  # relative to the tensor's largest gradient, like the failure reported
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-9 * max(scale, 1e-12), msg=name)


# ---------------------------------------------------------------- taps on any submodule (probed channels and stride)
def test_undeclared_layer_gets_channels_and_stride_from_a_probe():
    net = build_network(cfg("data.input_size=[64, 48]", "pdcr.layers={encoder.1: encoder, encoder.3: encoder}",
                            "pdcr.cross_layers=null", "pdcr.encoder_samples=[16, 8]"), in_channels=3)
    taps = {t.name: t for t in net.taps}
    assert "encoder.3" not in {t.name for t in net.model.pdcr_taps()}  # not declared by the host
    assert (taps["encoder.3"].channels, taps["encoder.3"].stride, taps["encoder.3"].role) == (32, (8, 8), "encoder")
    assert (taps["encoder.1"].channels, taps["encoder.1"].stride) == (8, (2, 2))  # declared: unchanged
    # the UAFS block after decoder.0 (a name that exists only once UAFS is inserted): channels[2], stride 4
    uafs = build_network(cfg("data.input_size=[64, 64]", "pdcr.layers={decoder.0.1: decoder}", "pdcr.cross_layers=null"), in_channels=1)
    assert (uafs.taps[0].channels, uafs.taps[0].stride) == (16, (4, 4))
    # no hook left behind, every module back in training mode
    assert all(not m._forward_hooks for m in net.model.modules())
    assert all(m.training for m in net.model.modules())


def test_probe_restores_modes_and_leaves_the_state_untouched():
    from dragsaw.engine.build import probe_taps

    model = build_network(cfg("uafs.enabled=false"), in_channels=2).model
    model.get_submodule("encoder.1").eval()  # mixed modes must come back as they were
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = probe_taps(model, ["encoder.2", "decoder.2"], 2, [40, 24])
    assert found == {"encoder.2": (16, (4, 4)), "decoder.2": (4, (1, 1))}
    assert {n: m.training for n, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():  # eval mode: batch-norm statistics not updated by the probe
        assert torch.equal(value, state[key]), key
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match=r"did not run on an input \[1, 3, \*data.input_size=\[40, 24\]\]"):
        probe_taps(model, ["encoder.2"], 3, [40, 24])  # the model takes 2 channels
    assert all(not m._forward_hooks for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_training_step_with_probed_layers_and_their_cross_term():
    from dragsaw.engine import SegmentationTask

    config = cfg("data.input_size=[64, 64]", "pdcr.layers={encoder.2: encoder, encoder.3: encoder}",
                 "pdcr.cross_layers=[[encoder.2, encoder.3]]", "pdcr.encoder_samples=[16, 16]",
                 "pdcr.cross_samples=8")
    torch.manual_seed(0)
    task = SegmentationTask.from_config(config, in_channels=1)
    assert task.strides == {"encoder.2": (4, 4), "encoder.3": (8, 8)}
    logged = {}
    task.log_dict = lambda logs, **k: logged.update(logs)
    task.log = lambda *a, **k: None
    batch = {"image": torch.randn(2, 1, 64, 64), "label": torch.randint(0, 2, (2, 64, 64))}
    task.training_step(batch, 0)
    keys = {"train/pdcr/layer/encoder.2", "train/pdcr/layer/encoder.3", "train/pdcr/cross/encoder.2~encoder.3"}
    assert {k for k in logged if k.startswith("train/pdcr/")} == keys
    # the same terms with strides inferred from the shapes (64 / 8), not from the probe
    with FeatureTaps(task.model, ["encoder.2", "encoder.3"]) as taps:
        task.model(batch["image"])
        ref = task.pdcr(taps.pop(), batch["label"])
    for key in keys:
        torch.testing.assert_close(logged[key], ref.terms[key[len("train/pdcr/"):]])


@pytest.mark.parametrize(
    "overrides,match",
    [
        # 60 -> 30 -> 15 -> 8 cells: 60 / 8 is no whole stride
        (["data.input_size=[60, 64]", "pdcr.layers={encoder.3: encoder}"],
         r"'encoder.3', whose map size \[8, 8\] does not divide data.input_size \[60, 64\]"),
        (["pdcr.layers={encoder.33: encoder}"], r"not a submodule of unet\. Did you mean 'encoder\.3'\? The host's"),
        (["pdcr.layers={encoder.3: middle}"], r"pdcr.layers\['encoder.3'\] must be one of \['encoder', 'decoder'\]"),
    ],
)
def test_probe_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_network(cfg(*overrides), in_channels=1)


def test_mlp_embedding_builds_a_head_per_tap_and_no_cross_projections():
    net = build_network(cfg("pdcr.embedding=mlp", "pdcr.projection_dim=6"), in_channels=1)
    assert net.pdcr.embedding == "mlp" and len(net.pdcr.projections) == 0
    channels = {t.name: t.channels for t in net.taps}
    assert set(net.pdcr.heads) == {n.replace(".", "__") for n in channels}
    for name, c in channels.items():
        head = net.pdcr.heads[name.replace(".", "__")]
        assert (head[0].in_features, head[0].out_features, head[2].out_features) == (c, c, 6)


def test_mlp_heads_are_optimised_with_the_network():
    from dragsaw.engine import SegmentationTask

    task = SegmentationTask.from_config(cfg("pdcr.embedding=mlp", "data.input_size=[32, 32]"), in_channels=1)
    optimised = {id(p) for group in task.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    heads = list(task.pdcr.heads.parameters())
    assert heads and all(id(p) in optimised for p in heads)


def test_channels_last_leaves_1x1_kernels_in_the_layout_autograd_gives_their_grads():
    """DDP copies each gradient into a bucket laid out like its parameter; for a 1x1 kernel autograd returns the
    plain layout, so the parameter must have it too (else DDP warns "Grad strides do not match" every step)."""
    from dragsaw.engine import SegmentationTask

    task = SegmentationTask.from_config(cfg(), in_channels=3)
    kernels = [m.weight for m in task.model.modules() if isinstance(m, torch.nn.Conv2d)]
    ones = [w for w in kernels if w.shape[2:] == (1, 1)]
    assert ones and all(w.stride() == torch.empty(w.shape).stride() for w in ones)
    task.log_dict = task.log = lambda *a, **k: None
    batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.randint(0, 2, (2, 64, 64))}
    task.training_step(batch, 0).backward()
    assert all(w.grad.stride() == w.stride() for w in kernels)


@pytest.mark.slow
def test_train_compile_compiles_the_host_in_place_keeping_checkpoint_names():
    from dragsaw.engine import SegmentationTask

    plain = SegmentationTask.from_config(cfg(), in_channels=3)
    task = SegmentationTask.from_config(cfg("train.compile=true"), in_channels=3)
    task.setup("fit")
    assert getattr(task.model, "_compiled_call_impl", None) is not None
    assert list(task.state_dict()) == list(plain.state_dict())  # no "_orig_mod." prefixes: checkpoints interchange
    compiled = task.model._compiled_call_impl
    task.setup("fit")  # a second fit (resume in the same process) does not wrap it twice
    assert task.model._compiled_call_impl is compiled
    untouched = SegmentationTask.from_config(cfg(), in_channels=3)
    untouched.setup("fit")
    assert getattr(untouched.model, "_compiled_call_impl", None) is None
