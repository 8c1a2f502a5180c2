"""Muon (docs/OPTIM.md#muon-update to docs/OPTIM.md#momentum-forms) against a hand-written
reference of docs/OPTIM.md#muon-update, per-expert 3-D units and torch.optim.Muon."""

import math

import pytest
import torch

from attnres.optim import Muon, build_muon, torch_muon_available, zeropower_newton_schulz

A, B, C = 3.4445, -4.7750, 2.0315


def reference_step(W, G, M, lr, wd, mu, nesterov, steps=5):
    """docs/OPTIM.md#muon-update written out for one 2-D unit; returns the new (W, M)."""
    M = mu * M + G
    N = G + mu * M if nesterov else M
    X = N / max(N.norm().item(), 1e-7)
    m, n = W.shape
    if m > n:
        X = X.T
    for _ in range(steps):
        S = X @ X.T
        X = A * X + (B * S + C * S @ S) @ X
    O = X.T if m > n else X
    return W * (1 - lr * wd) - lr * 0.2 * math.sqrt(max(m, n)) * O, M


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "heavy_ball"])
@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["wd0", "wd0.1"])
def test_step_matches_reference(shape, nesterov, wd):
    torch.manual_seed(0)
    W0 = torch.randn(shape, dtype=torch.float64)
    p = torch.nn.Parameter(W0.clone())
    opt = Muon([p], lr=0.05, weight_decay=wd, momentum=0.95, nesterov=nesterov, ns_dtype=torch.float64)
    W, M = W0.clone(), torch.zeros_like(W0)
    for _ in range(3):
        G = torch.randn(shape, dtype=torch.float64)
        p.grad = G.clone()
        opt.step()
        W, M = reference_step(W, G, M, lr=0.05, wd=wd, mu=0.95, nesterov=nesterov)
        torch.testing.assert_close(p.detach(), W, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], M, rtol=1e-12, atol=1e-12)


def test_experts_are_separate_units():
    torch.manual_seed(0)
    E, out, inp = 3, 20, 12
    W0 = torch.randn(E, out, inp, dtype=torch.float64)
    grads = [torch.randn(E, out, inp, dtype=torch.float64) for _ in range(2)]
    kw = dict(lr=0.05, weight_decay=0.1, ns_dtype=torch.float64)

    stacked = torch.nn.Parameter(W0.clone())
    opt = Muon([stacked], **kw)
    slices = [torch.nn.Parameter(W0[e].clone()) for e in range(E)]
    opt_slices = Muon(slices, **kw)
    flat = torch.nn.Parameter(W0.reshape(E * out, inp).clone())
    opt_flat = Muon([flat], **kw)
    for G in grads:
        stacked.grad = G.clone()
        opt.step()
        for e, s in enumerate(slices):
            s.grad = G[e].clone()
        opt_slices.step()
        flat.grad = G.reshape(E * out, inp).clone()
        opt_flat.step()

    assert opt.state[stacked]["momentum_buffer"].shape == (E, out, inp)
    torch.testing.assert_close(stacked.detach(), torch.stack([s.detach() for s in slices]),
                               rtol=1e-12, atol=1e-12)
    # Flattening couples the experts (and scales by sqrt(E·out)): clearly different.
    gap = (stacked.detach() - flat.detach().reshape(E, out, inp)).abs().max().item()
    assert gap > 1e-2


def test_ns_singular_values_in_range():
    torch.manual_seed(0)
    for shape in [(64, 128), (96, 64), (8, 24)]:
        O = zeropower_newton_schulz(torch.randn(shape), 5, (A, B, C), torch.float32)
        assert O.shape == shape and O.dtype == torch.float32
        sv = torch.linalg.svdvals(O.double())
        assert sv.min() > 0.675 and sv.max() < 1.14, (shape, sv.min(), sv.max())


def test_ns_batched_over_leading_dims():
    torch.manual_seed(0)
    X = torch.randn(4, 12, 20, dtype=torch.float64)
    out = zeropower_newton_schulz(X, 5, (A, B, C), torch.float64)
    ref = torch.stack([zeropower_newton_schulz(x, 5, (A, B, C), torch.float64) for x in X])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_update_rms_gaussian():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(128, 512))
    opt = Muon([("w", p)], lr=1e-2, weight_decay=0.0)
    p.grad = torch.randn(128, 512)
    opt.step()
    rms = opt.last_update_rms["w"]
    assert 0.16 <= rms <= 0.21
    # The record is the RMS of the applied update u (p moved by −lr·u from zero).
    assert rms == pytest.approx(p.detach().square().mean().sqrt().item() / 1e-2, rel=1e-4)


def test_update_rms_keys_are_indices_without_names():
    ps = [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)]
    opt = Muon([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.01)
    ps[0].grad, ps[2].grad = torch.randn(8, 4), torch.randn(8, 4)
    opt.step()
    assert sorted(opt.last_update_rms) == [0, 2]


def test_low_precision_param_keeps_fp32_momentum():
    p = torch.nn.Parameter(torch.randn(16, 8).bfloat16())
    opt = Muon([p], lr=0.01)
    p.grad = torch.randn(16, 8).bfloat16()
    opt.step()
    assert p.dtype == torch.bfloat16
    assert opt.state[p]["momentum_buffer"].dtype == torch.float32


def test_rejects_non_matrix():
    with pytest.raises(ValueError, match="gain"):
        Muon([("gain", torch.nn.Parameter(torch.ones(8)))], lr=0.01)


@pytest.mark.skipif(not torch_muon_available(), reason="needs torch.optim.Muon (torch >= 2.9)")
def test_parity_with_torch_muon():
    torch.manual_seed(0)
    shapes = [(64, 32), (32, 96), (48, 48)]
    init = [torch.randn(s) * 0.02 for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(10)]
    ours = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = [torch.nn.Parameter(w.clone()) for w in init]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    opt_ours = build_muon(ours, "ours", ns_dtype=torch.bfloat16, **kw)
    opt_torch = build_muon(theirs, "torch", **kw)
    assert isinstance(opt_torch, torch.optim.Muon)
    for step_grads in grads:
        for p, q, g in zip(ours, theirs, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_torch.step()
    for w, p, q in zip(init, ours, theirs):
        d_ours, d_torch = p.detach() - w, q.detach() - w
        rel = ((d_ours - d_torch).norm() / d_torch.norm()).item()
        assert rel <= 2e-2, rel


@pytest.mark.skipif(not torch_muon_available(), reason="needs torch.optim.Muon (torch >= 2.9)")
def test_torch_impl_rejects_experts():
    with pytest.raises(ValueError, match="experts.w1"):
        build_muon([("experts.w1", torch.nn.Parameter(torch.randn(2, 8, 4)))], "torch", lr=0.01)
    with pytest.raises(ValueError, match="bfloat16"):
        build_muon([torch.nn.Parameter(torch.randn(8, 4))], "torch", lr=0.01, ns_dtype=torch.float32)


def test_unknown_impl():
    with pytest.raises(ValueError, match="ours"):
        build_muon([torch.nn.Parameter(torch.randn(8, 4))], "fast", lr=0.01)
