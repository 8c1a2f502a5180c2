"""MoE layer (docs/BACKBONE.md#moe-ffn): output against a per-token loop, the selection-only bias,
gradients, aux-loss-free balancing, the sequence aux loss, tags, and Muon on 3-D experts."""

import pytest
import torch
import torch.nn.functional as F

from attnres import tags
from attnres.layers.moe import MoE, moe_layers, update_all_biases
from attnres.optim import Muon

D, E, K, DE = 16, 6, 2, 8


def make_moe(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    kw = dict(dict(d_model=D, n_experts=E, top_k=K, d_expert=DE), **kw)
    return MoE(**kw).to(dtype)


def randn(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loop_reference(moe, x):
    """The per-token formulas of docs/BACKBONE.md#moe-ffn, one token at a time, from the module's tensors."""
    def expert(w1, w3, w2, v):
        return w2 @ (F.silu(w1 @ v) * (w3 @ v))

    out = []
    for v in x.reshape(-1, x.shape[-1]):
        s = torch.sigmoid(moe.gate.weight @ v)                          # [E]
        sel = torch.topk(s + moe.bias, moe.top_k).indices
        w = moe.routed_scale * s[sel] / s[sel].sum()
        y = sum(w[j] * expert(moe.w1[e], moe.w3[e], moe.w2[e], v) for j, e in enumerate(sel.tolist()))
        if moe.shared is not None:
            sh = moe.shared
            y = y + expert(sh.w1.weight, sh.w3.weight, sh.w2.weight, v)
        out.append(y)
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("impl", ["sorted", "naive"])
@pytest.mark.parametrize("n_shared,top_k", [(1, 2), (0, 3), (2, 2)],
                         ids=["shared1_k2", "shared0_k3", "shared2_k2"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["b0", "b_random"])
def test_matches_loop_reference(impl, n_shared, top_k, with_bias):
    moe = make_moe(n_shared=n_shared, top_k=top_k, impl=impl)
    if with_bias:
        moe.bias.copy_(randn(E, seed=5) * 0.3)
    x = randn(2, 7, D)
    y = moe(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, loop_reference(moe, x), rtol=1e-12, atol=1e-12)


def test_bias_changes_selection_not_weighting():
    moe = make_moe()
    x = randn(30, D)
    ids0, w0, s = moe.route(x)
    moe.bias[3] = 10.0                                    # forces expert 3 into every top-k
    ids, w, s_b = moe.route(x)
    assert torch.equal(s, s_b)                            # scores do not see the bias
    assert (ids == 3).any(-1).all() and not (ids0 == 3).any(-1).all()
    s_sel = s.gather(-1, ids)
    torch.testing.assert_close(w, moe.routed_scale * s_sel / s_sel.sum(-1, keepdim=True))
    sb_sel = s_sel + moe.bias[ids]
    assert not torch.allclose(w, moe.routed_scale * sb_sel / sb_sel.sum(-1, keepdim=True))
    torch.testing.assert_close(w.sum(-1), torch.full((30,), moe.routed_scale, dtype=w.dtype))


def test_router_gets_gradient_bias_none():
    moe = make_moe()
    assert "bias" not in dict(moe.named_parameters())
    assert "bias" in moe.state_dict() and "counts" not in moe.state_dict()
    moe.bias.copy_(randn(E, seed=2)).requires_grad_(True)   # a leaf, only to probe the graph
    y = moe(randn(3, 5, D))
    (g_gate, g_bias) = torch.autograd.grad((y * randn(3, 5, D, seed=3)).sum(),
                                           [moe.gate.weight, moe.bias], allow_unused=True)
    assert g_bias is None
    assert g_gate.abs().max() > 0


def test_router_gradient_matches_finite_difference():
    """The weights path is the router's only gradient; check it numerically at fixed selection."""
    moe = make_moe()
    x = randn(10, D)
    dy = randn(10, D, seed=3)
    (g,) = torch.autograd.grad((moe(x) * dy).sum(), [moe.gate.weight])
    eps, i, j = 1e-6, 2, 5
    with torch.no_grad():
        moe.gate.weight[i, j] += eps
        up = (moe(x) * dy).sum()
        moe.gate.weight[i, j] -= 2 * eps
        down = (moe(x) * dy).sum()
    assert abs((up - down).item() / (2 * eps) - g[i, j].item()) < 1e-6 * max(1.0, abs(g[i, j].item()))


def test_config_errors():
    with pytest.raises(ValueError, match="top_k must be >= 2"):
        MoE(D, E, 1, DE)
    with pytest.raises(ValueError, match="exceeds n_experts"):
        MoE(D, 3, 4, DE)


def test_counts_accumulate_in_training_only_and_reset():
    moe = make_moe()
    x = randn(4, 5, D)
    moe.eval()
    moe(x)
    assert moe.counts.sum() == 0
    moe.train()
    moe(x)
    moe(x[:2])
    assert moe.counts.dtype == torch.int64
    assert moe.counts.sum().item() == (20 + 10) * K
    stats = moe.load_stats()
    assert stats["counts"] == moe.counts.tolist()
    assert moe.update_bias() == stats == moe.last_load
    assert moe.counts.sum() == 0


def test_update_rule_by_hand():
    moe = make_moe(n_experts=4, bias_update_rate=0.01)
    moe.counts.copy_(torch.tensor([5, 1, 0, 2]))          # c̄ = 2; sign(c̄ - c) = [-1, 1, 1, 0]
    stats = moe.update_bias()
    assert stats == dict(max_vio=1.5, dead=1, counts=[5, 1, 0, 2])
    expected = 0.01 * (torch.tensor([-1.0, 1, 1, 0]) - 0.25)
    torch.testing.assert_close(moe.bias, expected.to(moe.bias.dtype))
    assert abs(moe.bias.sum().item()) < 1e-15             # mean-centred: Σ b stays 0


def test_zero_rate_freezes_bias():
    moe = make_moe(bias_update_rate=0.0)
    moe.bias.copy_(randn(E, seed=4))
    before = moe.bias.clone()
    moe(randn(8, D))
    stats = moe.update_bias()
    assert torch.equal(moe.bias, before)
    assert sum(stats["counts"]) == 8 * K and moe.counts.sum() == 0


def test_balancing_evens_out_a_skewed_router():
    """Experts 0 and 1 are favoured by every token at first; bias updates alone, with forwards
    in between and no optimizer, bring the load near uniform."""
    E8 = 8
    moe = make_moe(n_experts=E8, bias_update_rate=5e-3, dtype=torch.float32)
    x = randn(256, D, dtype=torch.float32) + 1.0          # positive mean: a row shift is a logit shift
    with torch.no_grad():
        moe.gate.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
        moe.gate.weight[:2] += 0.1                          # logits of experts 0, 1 up by ≈ 1.6
    vio = []
    for _ in range(100):
        with torch.no_grad():
            moe(x)
        vio.append(moe.update_bias()["max_vio"])
    assert vio[0] > 1.5
    assert max(vio[-10:]) < 0.25
    assert moe.last_load["dead"] == 0
    assert moe.bias[:2].max() < 0 < moe.bias[2:].mean()     # the favoured experts are held back
    assert abs(moe.bias.sum().item()) < 1e-4                # mean-centred updates


def test_update_all_biases_reduces_once():
    model = torch.nn.Sequential(make_moe(seed=0), torch.nn.Linear(D, D), make_moe(seed=1, n_experts=4))
    model.double()
    assert [type(m) for m in moe_layers(model)] == [MoE, MoE]
    model(randn(6, D))
    before = [m.counts.clone() for m in moe_layers(model)]
    calls = []

    def fake_all_reduce(t):                               # two ranks with identical batches
        calls.append(t.shape)
        t.mul_(2)

    stats = update_all_biases(model, reduce=fake_all_reduce)
    assert calls == [(E + 4,)]
    assert list(stats) == ["0", "2"]
    assert [s["counts"] for s in stats.values()] == [(2 * c).tolist() for c in before]
    assert all(m.counts.sum() == 0 for m in moe_layers(model))


def test_sequence_aux_loss():
    moe = make_moe(aux_loss_coef=0.1)
    x = randn(3, 5, D)
    moe(x)
    loss = moe.aux_loss
    expected = 0.0
    for b in range(3):
        ids, _, s = moe.route(x[b])
        f = torch.bincount(ids.reshape(-1), minlength=E) * E / (K * 5)
        p = (s / s.sum(-1, keepdim=True)).mean(0)
        expected = expected + (f * p).sum() / 3
    torch.testing.assert_close(loss, 0.1 * expected)
    (g,) = torch.autograd.grad(loss, [moe.gate.weight])
    assert g.abs().max() > 0
    moe.eval()
    moe(x)
    assert moe.aux_loss == 0.0
    off = make_moe()
    off(x)
    assert off.aux_loss == 0.0


def test_router_fp32_under_autocast():
    moe = make_moe(dtype=torch.float32)
    x = randn(4, D, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids, w, s = moe.route(x)
        y = moe(x)
    assert w.dtype == s.dtype == torch.float32
    assert y.shape == x.shape


def test_tags_and_shapes():
    moe = make_moe(dtype=torch.float32)
    assert moe.w1.shape == moe.w3.shape == (E, DE, D) and moe.w2.shape == (E, D, DE)
    assert moe.shared.w1.weight.shape == (DE, D)
    for name, p in moe.named_parameters():
        assert tags.get_group(p) == tags.MUON, name
    assert tags.get_group(moe.gate.weight) == tags.MUON and moe.gate.bias is None
    std = torch.cat([moe.w1.flatten(), moe.w3.flatten(), moe.w2.flatten()]).std().item()
    assert abs(std - 0.02) < 0.003
    assert make_moe(n_shared=0).shared is None


def test_muon_3d_experts_equal_per_expert_2d_steps():
    moe = make_moe()
    (moe(randn(3, 5, D)) * randn(3, 5, D, seed=3)).sum().backward()
    for w in (moe.w1, moe.w2):
        p3 = torch.nn.Parameter(w.detach().clone())
        p2 = [torch.nn.Parameter(w.detach()[e].clone()) for e in range(E)]
        opt3 = Muon([p3], lr=0.02, weight_decay=0.1, ns_dtype=torch.float64)
        opt2 = Muon(p2, lr=0.02, weight_decay=0.1, ns_dtype=torch.float64)
        for step in range(2):
            g = w.grad * (1.0 + step)
            p3.grad = g.clone()
            for e, p in enumerate(p2):
                p.grad = g[e].clone()
            opt3.step()
            opt2.step()
        torch.testing.assert_close(p3.detach(), torch.stack([p.detach() for p in p2]), rtol=1e-12, atol=1e-12)
