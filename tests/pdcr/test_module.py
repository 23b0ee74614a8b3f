"""PatchDragsawLoss: agreement with the pure functions, end to end on small 2D/3D networks, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dragsaw.pdcr import PatchDragsawLoss, dragsaw_loss, grid_positions, label_composition, random_positions
from dragsaw.taps import FeatureTaps

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def tiny_net(dims: int, classes: int = 3) -> nn.Module:
    conv = CONV[dims]
    return nn.Sequential(
        nn.Sequential(conv(1, 8, 3, stride=2, padding=1), nn.ReLU()),  # "0": stride 2
        nn.Sequential(conv(8, 16, 3, stride=2, padding=1), nn.ReLU()),  # "1": stride 4
        conv(16, classes, 1),
        nn.Upsample(scale_factor=4, mode="nearest"),
    )


def test_single_layer_equals_manual_computation():
    torch.manual_seed(0)
    feat = torch.randn(2, 6, 8, 10, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 32, 40))
    loss = PatchDragsawLoss(3, {"x": 1.0}, samples=12, patch_sizes=(5, 9), border=1, temperature=0.7)
    out = loss({"x": feat}, labels)

    pos = grid_positions((8, 10), (1, 1), 12)
    emb = feat[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
    manual = []
    for k in (5, 9):
        comp = label_composition(labels, 3, 4, k)[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
        manual.append(dragsaw_loss(emb, comp, temperature=0.7))
    want = torch.stack(manual).mean()
    torch.testing.assert_close(out.total, want)
    torch.testing.assert_close(out.terms["layer/x"], want)


def test_several_layers_and_a_cross_term_equal_their_manual_sum():
    # layers a and b share a lattice (batched together, compositions computed once), c has its own; a and c also
    # meet in a cross-layer term (each gathered once for both uses): every term must match dragsaw_loss alone
    torch.manual_seed(1)
    feats = {"a": torch.randn(2, 6, 8, 10, dtype=torch.float64, requires_grad=True),
             "b": torch.randn(2, 5, 8, 10, dtype=torch.float64, requires_grad=True),
             "c": torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)}
    labels = torch.randint(0, 3, (2, 32, 40))
    weights = {"a": 0.5, "b": 2.0, "c": 1.5}
    loss = PatchDragsawLoss(3, weights, samples={"a": 12, "b": 12, "c": 6}, patch_sizes=(3, 7), border=1,
                            temperature=0.5, cross_layers=[("a", "c")], in_channels={"a": 6, "c": 4},
                            cross_samples={"a": 8, "c": 4}, cross_weight=0.25, projection_dim=3).double()
    out = loss(feats, labels)

    def sampled(name, count):
        grid = feats[name].shape[2:]
        pos = grid_positions(grid, (1, 1), count)
        stride = 32 // grid[0]
        emb = feats[name][:, :, pos[:, 0], pos[:, 1]].transpose(1, 2)
        comps = [label_composition(labels, 3, stride, k)[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2) for k in (3, 7)]
        return emb, comps

    want = {}
    for name, count in (("a", 12), ("b", 12), ("c", 6)):
        emb, comps = sampled(name, count)
        want[f"layer/{name}"] = torch.stack([dragsaw_loss(emb, c, temperature=0.5) for c in comps]).mean()
    emb_a, comps_a = sampled("a", 8)
    emb_c, comps_c = sampled("c", 4)
    emb_a, emb_c = loss.projections["a"](emb_a), loss.projections["c"](emb_c)
    want["cross/a~c"] = torch.stack(
        [dragsaw_loss(emb_a, ca, emb_c, cc, temperature=0.5) for ca, cc in zip(comps_a, comps_c)]
    ).mean()
    assert list(out.terms) == list(want)
    for key, value in want.items():
        torch.testing.assert_close(out.terms[key], value.detach())
    total = sum(weights[k[6:]] * v for k, v in want.items() if k.startswith("layer/")) + 0.25 * want["cross/a~c"]
    torch.testing.assert_close(out.total, total)
    grads = torch.autograd.grad(out.total, list(feats.values()))
    want_grads = torch.autograd.grad(total, list(feats.values()))
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref)


def test_grid_sampler_is_even_and_inside_the_crop():
    pos = grid_positions((20, 20), (3, 3), 16)
    assert pos.shape == (16, 2)
    assert pos.min() >= 3 and pos.max() <= 16
    assert len({tuple(p) for p in pos.tolist()}) == 16
    rows = sorted({p[0] for p in pos.tolist()})
    gaps = [b - a for a, b in zip(rows, rows[1:])]
    assert len(rows) == 4 and max(gaps) - min(gaps) <= 1  # a 4x4 lattice, evenly spaced up to rounding
    pos3 = grid_positions((16, 16, 16), (2, 2, 2), 64)
    assert pos3.shape == (64, 3) and len({tuple(p) for p in pos3.tolist()}) == 64
    rnd = random_positions(3, (10, 12), (1, 2), 30, device=torch.device("cpu"))
    assert rnd.shape == (3, 30, 2)
    assert all(len({tuple(p) for p in img.tolist()}) == 30 for img in rnd)
    assert rnd[..., 0].min() >= 1 and rnd[..., 0].max() <= 8 and rnd[..., 1].min() >= 2 and rnd[..., 1].max() <= 9


@pytest.mark.parametrize("dims,size", [(2, (32, 40)), (3, (16, 16, 24))])
@pytest.mark.parametrize("sampling", ["grid", "random"])
def test_end_to_end_through_feature_taps(dims, size, sampling):
    torch.manual_seed(0)
    net = tiny_net(dims)
    x = torch.randn(2, 1, *size)
    labels = torch.randint(0, 3, (2, *size))
    loss_fn = PatchDragsawLoss(
        3, {"0": 0.1, "1": 0.01}, spatial_dims=dims, samples={"0": 16, "1": 8}, cross_layers=[("0", "1")],
        in_channels={"0": 8, "1": 16}, cross_samples=8, projection_dim=4, sampling=sampling,
        temperature=0.5,
    )
    params = dict(loss_fn.named_parameters())
    assert {"projections.0.weight", "projections.1.weight"} <= set(params)
    with FeatureTaps(net, ["0", "1"]) as taps:
        logits = net(x)
        out = loss_fn(taps.pop(), labels)
    assert set(out.terms) == {"layer/0", "layer/1", "cross/0~1"}
    want = 0.1 * out.terms["layer/0"] + 0.01 * out.terms["layer/1"] + 0.01 * out.terms["cross/0~1"]
    torch.testing.assert_close(out.total.detach(), want)
    (out.total + logits.mean() * 0).backward()
    assert net[0][0].weight.grad.abs().sum() > 0 and net[1][0].weight.grad.abs().sum() > 0
    assert loss_fn.projections["0"].weight.grad.abs().sum() > 0
    assert loss_fn.projections["1"].weight.grad.abs().sum() > 0


def test_rf_pdcr_and_anisotropic_strides_3d():
    feat = torch.randn(1, 4, 4, 8, 8)
    labels = torch.randint(0, 2, (1, 16, 16, 16))
    loss_fn = PatchDragsawLoss(2, ["f"], spatial_dims=3, samples=8, patch_sizes="rf",
                               receptive_fields={"f": (9, 5, 5)}, border=0)
    out = loss_fn({"f": feat.double()}, labels)
    pos = grid_positions((4, 8, 8), (0, 0, 0), 8)
    comp = label_composition(labels, 2, (4, 2, 2), (9, 5, 5))[:, :, pos[:, 0], pos[:, 1], pos[:, 2]]
    emb = feat.double()[:, :, pos[:, 0], pos[:, 1], pos[:, 2]].transpose(1, 2)
    torch.testing.assert_close(out.total, dragsaw_loss(emb, comp.transpose(1, 2)))


def test_batch_size_one_and_channel_axis_labels():
    loss_fn = PatchDragsawLoss(2, ["f"], samples=4)
    out = loss_fn({"f": torch.randn(1, 3, 8, 8)}, torch.randint(0, 2, (1, 1, 32, 32)))
    assert out.total.ndim == 0 and torch.isfinite(out.total)


def test_orientation_switch_changes_the_value():
    feat, labels = torch.randn(2, 5, 8, 8), torch.randint(0, 2, (2, 32, 32))
    a = PatchDragsawLoss(2, ["f"], samples=16)({"f": feat}, labels).total
    b = PatchDragsawLoss(2, ["f"], samples=16, orientation="reference-2d")({"f": feat}, labels).total
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "ctor,call,match",
    [
        ({"layers": []}, None, "at least one layer"),
        ({"layers": ["f"], "patch_sizes": "rf"}, None, "needs receptive_fields.*'f'"),
        ({"layers": ["f"], "cross_layers": [("f", "g")]}, None, "in_channels lacks"),
        ({"layers": ["f"], "sampling": "sobol"}, None, "sampling must be one of"),
        ({"layers": ["f"], "samples": 0}, None, "samples for layer 'f'"),
        ({"layers": ["f"]}, {"features": {}}, "features lacks the tapped layers"),
        ({"layers": ["f"]}, {"labels": torch.zeros(3, 32, 32, dtype=torch.long)}, "batch size 2 but labels have 3"),
        ({"layers": ["f"]}, {"labels": torch.zeros(2, 30, 32, dtype=torch.long)}, "cannot infer the stride"),
        ({"layers": ["f"]}, {"strides": {"f": 3}}, "does not fit labels"),
        ({"layers": ["f"]}, {"labels": torch.zeros(2, 32, 32)}, "dtype torch.float32"),
        ({"layers": ["f"], "samples": 100}, {}, "fewer than samples=100"),
    ],
)
def test_errors(ctor, call, match):
    base_call = {"features": {"f": torch.randn(2, 4, 8, 8)}, "labels": torch.zeros(2, 32, 32, dtype=torch.long)}
    with pytest.raises(ValueError, match=match):
        loss_fn = PatchDragsawLoss(2, **ctor)
        if call is not None:
            loss_fn(**(base_call | call))


@pytest.mark.parametrize("dims,fmt", [(2, torch.channels_last), (3, torch.channels_last_3d)])
def test_channels_last_features_give_the_same_loss_and_gradients(dims, fmt):
    torch.manual_seed(2)
    size = (16,) * dims
    feats = {"a": torch.randn(2, 6, *[s // 2 for s in size], dtype=torch.float64),
             "b": torch.randn(2, 4, *[s // 4 for s in size], dtype=torch.float64)}
    labels = torch.randint(0, 3, (2, *size))
    loss = PatchDragsawLoss(3, ["a", "b"], spatial_dims=dims, samples=8, patch_sizes=(3, 5), border=0,
                            cross_layers=[("a", "b")], in_channels={"a": 6, "b": 4}, cross_samples=4).double()
    results = []
    for layout in (torch.contiguous_format, fmt):
        inputs = {n: f.contiguous(memory_format=layout).requires_grad_() for n, f in feats.items()}
        assert inputs["a"].is_contiguous(memory_format=layout)
        out = loss(inputs, labels)
        results.append((out.total, torch.autograd.grad(out.total, list(inputs.values()))))
    torch.testing.assert_close(results[1][0], results[0][0])
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- embedding="mlp": projection heads per tapped layer
def _head_by_hand(head: nn.Sequential, emb: torch.Tensor) -> torch.Tensor:
    """Linear -> ReLU -> Linear written out with the head's own weights (an independent reference of the head)."""
    w1, b1, w2, b2 = head[0].weight, head[0].bias, head[2].weight, head[2].bias
    return (emb @ w1.T + b1).clamp(min=0) @ w2.T + b2


def test_mlp_embedding_equals_dragsaw_loss_on_head_outputs_by_hand():
    torch.manual_seed(3)
    feats = {"a": torch.randn(2, 6, 8, 10, dtype=torch.float64, requires_grad=True),
             "c": torch.randn(2, 4, 4, 5, dtype=torch.float64, requires_grad=True)}
    labels = torch.randint(0, 3, (2, 32, 40))
    loss = PatchDragsawLoss(3, {"a": 0.5, "c": 1.5}, samples={"a": 12, "c": 6}, patch_sizes=(3, 7), border=1,
                            temperature=0.5, cross_layers=[("a", "c")], in_channels={"a": 6, "c": 4},
                            cross_samples={"a": 8, "c": 4}, cross_weight=0.25, projection_dim=5,
                            embedding="mlp").double()
    # one head per tapped layer, C -> C -> projection_dim; no linear cross projections
    assert len(loss.projections) == 0
    assert (loss.heads["a"][0].weight.shape, loss.heads["a"][2].weight.shape) == ((6, 6), (5, 6))
    assert (loss.heads["c"][0].weight.shape, loss.heads["c"][2].weight.shape) == ((4, 4), (5, 4))
    out = loss(feats, labels)

    def sampled(name, count):
        grid = feats[name].shape[2:]
        pos = grid_positions(grid, (1, 1), count)
        stride = 32 // grid[0]
        emb = _head_by_hand(loss.heads[name], feats[name][:, :, pos[:, 0], pos[:, 1]].transpose(1, 2))
        comps = [label_composition(labels, 3, stride, k)[:, :, pos[:, 0], pos[:, 1]].transpose(1, 2) for k in (3, 7)]
        return emb, comps

    want = {}
    for name, count in (("a", 12), ("c", 6)):
        emb, comps = sampled(name, count)
        want[f"layer/{name}"] = torch.stack([dragsaw_loss(emb, c, temperature=0.5) for c in comps]).mean()
    emb_a, comps_a = sampled("a", 8)
    emb_c, comps_c = sampled("c", 4)
    want["cross/a~c"] = torch.stack(
        [dragsaw_loss(emb_a, ca, emb_c, cc, temperature=0.5) for ca, cc in zip(comps_a, comps_c)]
    ).mean()
    assert list(out.terms) == list(want)
    for key, value in want.items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(out.terms[key], value.detach())
    total = 0.5 * want["layer/a"] + 1.5 * want["layer/c"] + 0.25 * want["cross/a~c"]
    torch.testing.assert_close(out.total, total)
    # gradients reach the heads' weights and the tapped maps, and agree with the hand computation
    inputs = [*feats.values(), *loss.heads.parameters()]
    grads = torch.autograd.grad(out.total, inputs)
    want_grads = torch.autograd.grad(total, inputs)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref)
    assert all(g.abs().sum() > 0 for g in grads)


def test_mlp_head_makes_the_push_reachable_on_relu_features():
    # two pure regions (left half class 0, right half class 1) on non-negative (post-ReLU) features: the raw cosines
    # between the regions can never drop below 0, but the head's outputs can, and training drives them towards -1
    torch.manual_seed(0)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[..., 16:] = 1
    pos = grid_positions((8, 8), (0, 0), 16)
    classes = labels[0, pos[:, 0] * 4, pos[:, 1] * 4]
    assert set(classes.tolist()) == {0, 1}

    def cross_class_cosine(vectors):
        unit = torch.nn.functional.normalize(vectors, dim=-1)
        cos = unit @ unit.T
        return cos[classes == 0][:, classes == 1].mean().item(), cos[classes == 0][:, classes == 0].mean().item()

    results = {}
    for embedding in ("feature", "mlp"):
        torch.manual_seed(0)
        raw = torch.randn(1, 16, 8, 8, dtype=torch.float64, requires_grad=True)
        loss = PatchDragsawLoss(2, ["f"], samples=16, patch_sizes=(3,), border=0, embedding=embedding,
                                in_channels={"f": 16}, projection_dim=8).double()
        optimiser = torch.optim.Adam([raw, *loss.parameters()], lr=0.05)
        for _ in range(100):
            optimiser.zero_grad()
            value = loss({"f": raw.relu()}, labels).total
            value.backward()
            optimiser.step()
        with torch.no_grad():
            vectors = raw.relu()[0, :, pos[:, 0], pos[:, 1]].T
            if embedding == "mlp":
                vectors = _head_by_hand(loss.heads["f"], vectors)
            results[embedding] = (*cross_class_cosine(vectors), value.item())
    assert results["feature"][0] >= 0.0  # the raw push target cos = -1 is out of reach
    assert results["mlp"][0] < -0.9 and results["mlp"][1] > 0.9  # pushed apart across, pulled together within
    assert results["mlp"][2] < results["feature"][2] - 0.1  # and the loss gets lower than the raw features allow


def test_mlp_embedding_errors():
    with pytest.raises(ValueError, match=r"embedding='mlp' needs .*in_channels lacks \['g'\].*embedding='feature'"):
        PatchDragsawLoss(2, ["f", "g"], embedding="mlp", in_channels={"f": 4})
    with pytest.raises(ValueError, match="embedding must be one of"):
        PatchDragsawLoss(2, ["f"], embedding="proj")
    with pytest.raises(ValueError, match="projection_dim must be an int >= 1"):
        PatchDragsawLoss(2, ["f"], embedding="mlp", in_channels={"f": 4}, projection_dim=0)
    loss = PatchDragsawLoss(2, ["f"], samples=4, embedding="mlp", in_channels={"f": 5})
    with pytest.raises(ValueError, match=r"feature 'f' has 4 channels .*in_channels\['f'\]=5"):
        loss({"f": torch.randn(2, 4, 8, 8)}, torch.zeros(2, 32, 32, dtype=torch.long))


def test_feature_embedding_creates_no_heads():
    loss = PatchDragsawLoss(2, ["f", "g"], cross_layers=[("f", "g")], in_channels={"f": 4, "g": 6}, projection_dim=3)
    assert loss.embedding == "feature" and len(loss.heads) == 0
    assert sorted(k for k, _ in loss.named_parameters()) == [
        "projections.f.bias", "projections.f.weight", "projections.g.bias", "projections.g.weight"]
