"""The training stream shares each completed source's inverse RMS across the reads that see it
(`AttnResStream.share_rms`): computed once per source, and the outputs and every gradient still
those of the plain reference (fp64, rel ≤ 1e-12 per read)."""

from __future__ import annotations

import pytest
import torch

import attnres.layers.residual as residual_mod
from attnres.config import ResidualConfig
from attnres.layers.residual import Residual

D, L = 16, 8


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def setup(kind, block_size=0, impl="recompute", seed=0):
    res = Residual(ResidualConfig(kind, block_size=block_size, impl=impl), L)
    reads = [res.make_read(D, sub).double() for sub in range(L + 1)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in reads:
            r.query.copy_(torch.randn(D, generator=gen, dtype=torch.float64) * 0.5)
            r.key_norm.weight.copy_(1 + 0.3 * torch.randn(D, generator=gen, dtype=torch.float64))
    e = torch.randn(2, 3, D, generator=gen, dtype=torch.float64)
    outs = [torch.randn(2, 3, D, generator=gen, dtype=torch.float64) for _ in range(L)]
    return res, reads, e, outs


def forward_backward(res, reads, e, outs):
    """Reads fed back through a fixed nonlinearity, so every source depends on earlier reads;
    returns the reads' outputs and the gradients of every leaf."""
    e = e.clone().requires_grad_()
    outs = [o.clone().requires_grad_() for o in outs]
    stream = res.stream(e, reads)
    got = []
    for sub, out in enumerate(outs):
        h = stream.read(sub)
        got.append(h)
        stream.write(sub, torch.tanh(h) * out)
    got.append(stream.final())
    loss = sum((h * (k + 1)).sum() for k, h in enumerate(got))
    params = [p for r in reads for p in r.parameters()]
    # The first read has one source, so its query and gain get no gradient (allow_unused).
    grads = torch.autograd.grad(loss, [e, *outs, *params], allow_unused=True)
    return stream, [h.detach() for h in got], grads


@pytest.mark.parametrize("kind,S", [("full", 0), ("block", 2), ("block", 3)])
def test_outputs_and_every_gradient_match_the_naive_reference(kind, S):
    res, reads, e, outs = setup(kind, S)
    stream, got, grads = forward_backward(res, reads, e, outs)
    assert stream.share_rms
    ref_res = Residual(ResidualConfig(kind, block_size=S, impl="naive"), L)
    ref_stream, ref, ref_grads = forward_backward(ref_res, reads, e, outs)
    assert not ref_stream.share_rms
    for k, (a, b) in enumerate(zip(got, ref)):
        assert rel(a, b) <= 1e-12, f"read {k}"
    assert [g is None for g in grads] == [g is None for g in ref_grads]
    assert sum(g is not None for g in grads) > len(grads) - 3
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        if a is not None:
            assert rel(a, b) <= 1e-12, f"gradient {k}"


@pytest.mark.parametrize("kind,S,sources", [("full", 0, L + 1), ("block", 4, 3)])
def test_each_completed_source_gets_its_rms_once(monkeypatch, kind, S, sources):
    calls = []
    real = residual_mod.source_inv_rms

    def counting(v, eps):
        calls.append(v)
        return real(v, eps)

    monkeypatch.setattr(residual_mod, "source_inv_rms", counting)
    res, reads, e, outs = setup(kind, S)
    forward_backward(res, reads, e, outs)
    # the embedding and every completed block (Full: every output), each once
    assert len(calls) == sources
    assert len({id(v) for v in calls}) == sources


def test_two_phase_and_variants_do_not_share():
    for cfg in (ResidualConfig("block", impl="two_phase"), ResidualConfig("full", key_norm="none"),
                ResidualConfig("full", impl="naive")):
        res = Residual(cfg, L)
        reads = [res.make_read(D, sub) for sub in range(L + 1)]
        assert not res.stream(torch.randn(1, 2, D), reads).share_rms, cfg
