"""dragsaw_loss against a hand-written double loop over pairs, and the direction of its gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dragsaw.pdcr import dragsaw_loss


def loop_loss(u, pu, v, pv, temperature, orientation="intended"):
    """Plain Python double loop over ordered pairs (n, m), straight from METHOD.md section 0."""
    total, count = 0.0, 0
    for b in range(u.shape[0]):
        valid_b = [m for m in range(v.shape[1]) if float(pv[b, m].sum()) > 0]
        if not valid_b:
            continue
        for n in range(u.shape[1]):
            if float(pu[b, n].sum()) == 0:
                continue

            def terms(m):
                nu, nv = u[b, n].norm().item(), v[b, m].norm().item()
                cos = 0.0 if nu == 0 or nv == 0 else float(u[b, n] @ v[b, m]) / (nu * nv)
                s = (cos - 1.0) / temperature
                d = 0.5 * sum(abs(float(x - y)) for x, y in zip(pu[b, n], pv[b, m]))
                a = 1.0 - d
                return (s, a, d) if orientation == "intended" else (s, d, a)

            lse = math.log(sum(math.exp(terms(k)[2] * terms(k)[0]) for k in valid_b))
            for m in valid_b:
                s, w_pos, _ = terms(m)
                total += -w_pos * s + lse
                count += 1
    return total / max(count, 1)


def random_case(b=2, n=5, m=4, d=3, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, m, d, generator=g, dtype=torch.float64)
    pu = torch.softmax(torch.randn(b, n, k, generator=g, dtype=torch.float64) * 2, -1)
    pv = torch.softmax(torch.randn(b, m, k, generator=g, dtype=torch.float64) * 2, -1)
    return u, pu, v, pv


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.07, 0.01])  # 0.01: logits down to -200, shifted path
@pytest.mark.parametrize("orientation", ["intended", "reference-2d"])
def test_in_layer_matches_double_loop(temperature, orientation):
    u, pu, _, _ = random_case(seed=1)
    got = dragsaw_loss(u, pu, temperature=temperature, orientation=orientation)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(loop_loss(u, pu, u, pu, temperature, orientation), rel=1e-10)


def test_cross_layer_matches_double_loop():
    u, pu, v, pv = random_case(n=6, m=3, seed=2)
    got = dragsaw_loss(u, pu, v, pv, temperature=0.5)
    assert got.item() == pytest.approx(loop_loss(u, pu, v, pv, 0.5), rel=1e-10)


@pytest.mark.parametrize("orientation", ["intended", "reference-2d"])
def test_unshifted_log_sum_exp_equals_the_shifted_one(orientation):
    # grouped_loss skips the max shift when T bounds the logits; value and gradients must not change, also with
    # invalid anchors, invalid candidates and an image without any valid candidate
    from dragsaw.pdcr.loss import grouped_loss, similarity

    u, pu, v, pv = random_case(b=3, n=6, m=5, seed=4)
    pu[0, 2] = 0.0
    pv[1, 1] = 0.0
    pv[2] = 0.0
    u.requires_grad_()
    results = []
    for temperature in (0.25, None):
        sim = similarity(u, v, 0.25, torch.float64)
        value = grouped_loss(sim[None], pu[None, None], pv[None, None], orientation, temperature)[0]
        results.append((value, torch.autograd.grad(value, u)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-14)
    assert torch.isfinite(results[0][1]).all()


def test_invalid_locations_are_left_out():
    u, pu, v, pv = random_case(seed=3)
    pu[0, 1] = 0.0
    pv[1, :] = 0.0  # image 1 has no valid candidate at all
    got = dragsaw_loss(u, pu, v, pv)
    assert got.item() == pytest.approx(loop_loss(u, pu, v, pv, 1.0), rel=1e-10)
    # the left-out entries do not influence the value
    u2 = u.clone()
    u2[0, 1] = 1e6
    assert dragsaw_loss(u2, pu, v, pv).item() == pytest.approx(got.item(), rel=1e-12)


def test_binary_divergence_equals_foreground_difference():
    # for K=2, the total variation equals |phi_fg,n - phi_fg,m| (the reference's divergence)
    fg = torch.tensor([[0.0, 0.3, 1.0]], dtype=torch.float64)
    comp = torch.stack([1 - fg, fg], -1)
    u = torch.randn(1, 3, 4, dtype=torch.float64)
    ref_fg = torch.stack([1 - fg, fg], -1)
    assert dragsaw_loss(u, comp).item() == pytest.approx(loop_loss(u, ref_fg, u, ref_fg, 1.0))


def test_finite_for_zero_vectors_and_low_precision():
    u = torch.zeros(2, 4, 8)
    comp = torch.softmax(torch.randn(2, 4, 2), -1)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = u.clone().to(dtype).requires_grad_(True)
        loss = dragsaw_loss(x, comp, temperature=0.05)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
        assert loss.dtype == torch.float32
    big = (torch.randn(2, 4, 8) * 1e4).bfloat16().requires_grad_(True)
    loss = dragsaw_loss(big, comp)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    ref = dragsaw_loss(big.detach().double(), comp.double()).item()
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_no_valid_pair_gives_zero_with_graph():
    u = torch.randn(1, 3, 4, requires_grad=True)
    loss = dragsaw_loss(u, torch.zeros(1, 3, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(u.grad, torch.zeros_like(u))


def _cosines_after_descent(orientation, steps=10):
    """Two same-composition points (0, 1) and one different (2); a few descent steps on the embeddings."""
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(1, 3, 32), dim=-1))
    comp = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    opt = torch.optim.SGD([emb], lr=0.5)

    def cosines():
        e = torch.nn.functional.normalize(emb.detach()[0], dim=-1)
        return float(e[0] @ e[1]), float(e[0] @ e[2])

    before = cosines()
    for _ in range(steps):
        opt.zero_grad()
        dragsaw_loss(emb, comp, orientation=orientation).backward()
        opt.step()
    return before, cosines()


def test_gradient_pulls_same_and_pushes_different():
    (same0, diff0), (same1, diff1) = _cosines_after_descent("intended")
    assert same1 > same0 + 0.05
    assert diff1 < diff0 - 0.05
    assert same1 > diff1 + 0.05


def test_reference_2d_orientation_does_the_opposite():
    (same0, diff0), (same1, diff1) = _cosines_after_descent("reference-2d")
    assert diff1 > diff0 + 0.05  # different compositions pulled together ...
    assert diff1 > same1 + 0.05  # ... ending closer than the same-composition pair


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((torch.randn(2, 4), torch.rand(2, 4, 2)), {}, r"emb_a must be a 3-D tensor"),
        ((torch.randn(2, 4, 3), torch.rand(2, 5, 2)), {}, "disagree on batch or number of locations"),
        ((torch.randn(2, 4, 3), torch.rand(2, 4, 2), torch.randn(3, 4, 3), torch.rand(3, 4, 2)), {}, "batch sizes differ"),
        ((torch.randn(2, 4, 3), torch.rand(2, 4, 2), torch.randn(2, 4, 5), torch.rand(2, 4, 2)), {}, "project both"),
        ((torch.randn(2, 4, 3), torch.rand(2, 4, 2), torch.randn(2, 4, 3)), {}, "go together"),
        ((torch.randn(2, 4, 3), torch.rand(2, 4, 2)), {"temperature": 0.0}, "temperature must be"),
        ((torch.randn(2, 4, 3), torch.rand(2, 4, 2)), {"orientation": "2d"}, "orientation must be one of"),
        ((torch.randn(2, 0, 3), torch.rand(2, 0, 2)), {}, "no sampled locations"),
    ],
)
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dragsaw_loss(*args, **kwargs)
