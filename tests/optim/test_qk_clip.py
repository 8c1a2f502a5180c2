"""QK-Clip (docs/OPTIM.md#qk-clip): per-head max logits, the γ rule, the per-head weight scalings."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnres import config
from attnres.bench.qk_clip import train_max_logits
from attnres.layers.attention import Attention, apply_rotary, rotary_tables, visible_max_logit
from attnres.layers.mla import MultiHeadLatentAttention
from attnres.optim.qk_clip import (
    apply_qk_clip,
    attention_layers,
    collect_max_logits,
    enable_tracking,
    qk_clip_gamma,
    reset_max_logits,
)

D, H, D_NOPE, D_ROPE, D_V, R_KV = 32, 4, 8, 4, 8, 8


def make_mla(rope=False, seed=0):
    torch.manual_seed(seed)
    layer = MultiHeadLatentAttention(D, H, D_NOPE, D_ROPE, D_V, R_KV, rope=rope)
    with torch.no_grad():  # logits of a few units, spread over heads
        for p, s in zip((layer.q_proj.weight, layer.kv_a_proj_with_mqa.weight,
                         layer.kv_b_proj.weight), (3.0, 2.0, 3.0)):
            p.mul_(s)
        layer.q_proj.weight.view(H, -1, D).mul_(torch.tensor([0.3, 1.0, 2.0, 4.0])[:, None, None])
    return layer


def make_attention(n_kv_heads, seed=0):
    torch.manual_seed(seed)
    layer = Attention(D, H, n_kv_heads)
    with torch.no_grad():
        layer.q_proj.weight.mul_(4.0)
        layer.k_proj.weight.mul_(4.0)
        layer.q_proj.weight.view(H, -1, D).mul_(torch.tensor([0.3, 1.0, 2.0, 4.0])[:, None, None])
    return layer


LAYERS = {
    "mla-nope": lambda: make_mla(rope=False),
    "mla-rope": lambda: make_mla(rope=True),
    "gqa": lambda: make_attention(n_kv_heads=2),
    "mha": lambda: make_attention(n_kv_heads=H),
}


def make_x(B=2, T=9, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def measure(module, x):
    """Per-layer, per-head max logits of one training-mode forward: [n_layers, H]."""
    module.train()
    enable_tracking(module)
    reset_max_logits(module)
    with torch.no_grad():
        module(x)
    return collect_max_logits(module)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# --- (1) the [E] check and (2) what is left alone ---------------------------------------------

@pytest.mark.parametrize("kind", list(LAYERS))
def test_clipping_caps_each_head_at_tau_on_the_same_batch(kind):
    """The [E] target of docs/TARGETS.md#d-muonclip: measure, apply QK-Clip alone (no optimizer
    step), rerun the same batch: every head's max becomes min(S_max, τ)."""
    layer, x = LAYERS[kind](), make_x()
    before = measure(layer, x)[0]
    tau = before.median().item()                       # about half of the heads above τ
    assert (before > tau).sum() >= 1 and (before <= tau).sum() >= 1
    stats = apply_qk_clip(layer, tau)
    assert torch.isinf(layer.max_logit).all()          # reset after applying
    assert stats.n_clipped == int((before > tau).sum())
    after = measure(layer, x)[0]
    torch.testing.assert_close(after, torch.minimum(before, torch.tensor(tau)),
                               rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_heads_below_tau_and_the_shared_paths_stay_bitwise_the_same(kind):
    layer, x = LAYERS[kind](), make_x()
    before = measure(layer, x)[0]
    tau = before.median().item()
    clipped = before > tau
    gamma = torch.full_like(before, tau) / before.clamp_min(tau)   # exactly 1 at and below τ
    w0 = snapshot(layer)
    apply_qk_clip(layer, tau)
    w1 = snapshot(layer)

    def heads(name, per_head):
        return w0[name].view(H, per_head, -1), w1[name].view(H, per_head, -1)

    if kind.startswith("mla"):
        q0, q1 = heads("q_proj.weight", D_NOPE + D_ROPE)
        kv0, kv1 = heads("kv_b_proj.weight", D_NOPE + D_V)
        root = gamma.sqrt()[:, None, None]
        torch.testing.assert_close(q1[:, :D_NOPE], q0[:, :D_NOPE] * root, rtol=0, atol=0)
        torch.testing.assert_close(q1[:, D_NOPE:], q0[:, D_NOPE:] * gamma[:, None, None],
                                   rtol=0, atol=0)
        torch.testing.assert_close(kv1[:, :D_NOPE], kv0[:, :D_NOPE] * root, rtol=0, atol=0)
        assert torch.equal(kv1[:, D_NOPE:], kv0[:, D_NOPE:])          # V rows
        untouched = ["kv_a_proj_with_mqa.weight", "kv_a_layernorm.weight", "o_proj.weight"]
        changed = [(q0, q1), (kv0[:, :D_NOPE], kv1[:, :D_NOPE])]
    else:
        hd = D // H
        q0, q1 = heads("q_proj.weight", hd)
        if kind == "gqa":   # the whole γ on the query rows, the shared K alone
            torch.testing.assert_close(q1, q0 * gamma[:, None, None], rtol=0, atol=0)
            untouched = ["k_proj.weight", "v_proj.weight", "o_proj.weight"]
            changed = [(q0, q1)]
        else:               # MHA: √γ on each side
            k0, k1 = heads("k_proj.weight", hd)
            root = gamma.sqrt()[:, None, None]
            torch.testing.assert_close(q1, q0 * root, rtol=0, atol=0)
            torch.testing.assert_close(k1, k0 * root, rtol=0, atol=0)
            untouched = ["v_proj.weight", "o_proj.weight"]
            changed = [(q0, q1), (k0, k1)]
    for name in untouched:
        assert torch.equal(w0[name], w1[name]), name
    for a, b in changed:
        assert torch.equal(a[~clipped], b[~clipped])                  # heads below τ: bitwise
        assert not torch.equal(a[clipped], b[clipped])


def test_clipping_a_head_leaves_the_other_heads_logits_unchanged():
    layer, x = make_mla(), make_x()
    before = measure(layer, x)[0]
    tau = before.sort().values[-2].item()             # only the largest head is clipped
    apply_qk_clip(layer, tau)
    after = measure(layer, x)[0]
    assert torch.equal(after[:-1], before[:-1]) and after[-1] < before[-1]


# --- (3) what the max is taken over ------------------------------------------------------------

def explicit_visible_max(layer, x, start=0, past=None):
    """Reference: the full scaled score matrix of the dense layer, future keys masked."""
    B, T, _ = x.shape
    hd = layer.head_dim
    xs = x if past is None else torch.cat([past, x], dim=1)
    S = xs.shape[1]
    q = layer.q_proj(x).view(B, T, H, hd).transpose(1, 2)
    k = layer.k_proj(xs).view(B, S, layer.n_kv_heads, hd).transpose(1, 2)
    q = apply_rotary(q, *rotary_tables(hd, torch.arange(start, start + T), layer.rope_theta))
    k = apply_rotary(k, *rotary_tables(hd, torch.arange(S), layer.rope_theta))
    k = k.repeat_interleave(H // layer.n_kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) * hd ** -0.5
    visible = torch.arange(start, start + T)[:, None] >= torch.arange(S)[None, :]
    return scores.masked_fill(~visible, float("-inf")).amax(dim=(0, 2, 3)).detach()


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_dense_max_logit_is_the_running_max_of_visible_scaled_scores(n_kv_heads):
    layer = make_attention(n_kv_heads).train()
    assert torch.isinf(layer.max_logit).all() and "max_logit" not in layer.state_dict()
    x1, x2 = make_x(2, 9, seed=3), make_x(3, 5, seed=4)
    layer(x1)                                              # not tracking yet
    assert torch.isinf(layer.max_logit).all()
    layer.track_max_logit = True
    layer(x1)
    torch.testing.assert_close(layer.max_logit, explicit_visible_max(layer, x1), rtol=1e-6, atol=0)
    layer(x2)                                              # running max over micro-batches
    expected = torch.maximum(explicit_visible_max(layer, x1), explicit_visible_max(layer, x2))
    torch.testing.assert_close(layer.max_logit, expected, rtol=1e-6, atol=0)
    layer.eval()(x1 * 100)                                 # eval forwards are not collected
    torch.testing.assert_close(layer.max_logit, expected, rtol=1e-6, atol=0)
    layer.reset_max_logit()
    assert torch.isinf(layer.max_logit).all() and (layer.max_logit < 0).all()


def test_dense_max_logit_chunks_and_the_kv_cache_offset():
    layer = make_attention(2).train()
    layer.track_max_logit = True
    past, x = make_x(2, 6, seed=5), make_x(2, 5, seed=6)
    cache = layer.empty_cache()
    with torch.no_grad():
        layer(past, cache)
        layer.reset_max_logit()
        layer(x, cache)                                    # queries at positions 6..10
    torch.testing.assert_close(layer.max_logit, explicit_visible_max(layer, x, 6, past),
                               rtol=1e-6, atol=0)
    q, k = torch.randn(2, H, 7, 8), torch.randn(2, 2, 7, 8)
    whole = visible_max_logit(q, k, 0.3, chunk=7)
    for chunk in (1, 2, 3):
        assert torch.equal(visible_max_logit(q, k, 0.3, chunk=chunk), whole)


def test_dense_max_logit_ignores_larger_masked_future_scores():
    """The only non-zero logit is q_0 · k_1 (query 0, future key 1): the visible max is 0.
    (Padding is not applicable: training windows are packed, the layers take no padding mask.)"""
    layer = make_attention(2).train()
    layer.track_max_logit = True
    hd = D // H
    with torch.no_grad():
        layer.q_proj.weight.zero_()
        layer.k_proj.weight.zero_()
        layer.q_proj.weight.view(H, hd, D)[:, 0, 0] = 3.0      # q_i ∝ x_i[0]
        layer.k_proj.weight.view(2, hd, D)[:, 0, 1] = 2.0      # k_j ∝ x_j[1]
    x = F.one_hot(torch.arange(2), D).float()[None]            # e_0, e_1
    layer(x)
    q0 = layer.q_proj(x)[0, 0].view(H, hd)                     # position 0: not rotated
    k1 = apply_rotary(layer.k_proj(x)[0, 1].view(1, 2, 1, hd),
                      *rotary_tables(hd, torch.tensor([1]), layer.rope_theta))[0, :, 0]
    future = (q0 * k1.repeat_interleave(2, 0)).sum(-1) * hd ** -0.5  # the masked s_01 per head
    assert (future > 1).all()
    assert torch.equal(explicit_visible_max(layer, x), torch.zeros(H))
    assert torch.equal(layer.max_logit, torch.zeros(H))


# --- (4) γ ----------------------------------------------------------------------------------

def test_gamma_is_one_up_to_tau_and_tau_over_s_above():
    s = torch.tensor([float("-inf"), -1e30, -5.0, -0.0, 0.0, 50.0, 100.0, 200.0, 1e30])
    g = qk_clip_gamma(s, 100.0)
    assert torch.equal(g[:7], torch.ones(7)) and not torch.signbit(g).any()
    torch.testing.assert_close(g[7:], torch.tensor([0.5, 1e-28]), rtol=1e-6, atol=0)
    # a head exactly at τ is not clipped, also when 1/τ is inexact (τ·(1/τ) = 1 − 2⁻²⁴ here)
    at = torch.tensor([2.0, 5.444456100463867])
    assert torch.equal(qk_clip_gamma(at, float(at[1])), torch.ones(2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gamma_raises_on_nan_and_plus_inf_and_apply_changes_nothing(bad):
    with pytest.raises(ValueError, match="non-finite max logit"):
        qk_clip_gamma(torch.tensor([[1.0, bad]]), 100.0)
    layer = make_mla()
    layer.max_logit[1] = bad
    w0 = snapshot(layer)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        apply_qk_clip(layer, 1.0)
    assert all(torch.equal(w0[n], p) for n, p in layer.named_parameters())
    with pytest.raises(ValueError, match="tau"):
        qk_clip_gamma(torch.zeros(1), 0.0)


def test_an_unfilled_buffer_is_a_bitwise_no_op():
    layer = make_mla()
    w0 = snapshot(layer)
    stats = apply_qk_clip(layer, 1e-3)                  # no forward: S_max = −inf everywhere
    assert stats.n_clipped == 0 and torch.equal(stats.gamma, torch.ones(1, H))
    assert all(torch.equal(w0[n], p) for n, p in layer.named_parameters())


# --- packing and the cross-rank reduction hook --------------------------------------------

class Stack(nn.Module):
    """An MLA layer (4 heads) and a dense GQA layer (2 heads) in sequence."""

    def __init__(self):
        super().__init__()
        self.mla = make_mla(seed=0)
        self.dense = Attention(D, 2, 1)

    def forward(self, x):
        x = x + self.mla(x)
        return x + self.dense(x)


def test_pack_pads_narrow_layers_and_reduce_sees_one_tensor():
    model = Stack()
    packed = measure(model, make_x())
    assert [n for n, _ in attention_layers(model)] == ["mla", "dense"]
    assert packed.shape == (2, H) and packed.dtype == torch.float32
    assert torch.isinf(packed[1, 2:]).all() and torch.isfinite(packed[1, :2]).all()

    seen = []

    def in_place(t):   # like dist.all_reduce(t, op=MAX) with a rank whose maxima are 2τ
        seen.append(t.shape)
        t.copy_(torch.maximum(t, torch.full_like(t, 2.0)))

    w0 = snapshot(model)
    stats = apply_qk_clip(model, 1.0, reduce=in_place)
    assert seen == [(2, H)] and stats.names == ["mla", "dense"]
    assert (stats.gamma[0] <= 0.5).all() and (stats.gamma[1, :2] <= 0.5).all()
    assert stats.n_heads == [H, 2] and stats.n_clipped == H + 2
    assert torch.equal(stats.gamma[1, 2:], torch.ones(2))          # padding is no head
    # the dense layer has 2 heads: only its real rows are scaled (by γ ≤ 0.5)
    q0, q1 = w0["dense.q_proj.weight"], model.dense.q_proj.weight.detach()
    torch.testing.assert_close(q1, q0 * stats.gamma[1, :2].repeat_interleave(D // 2)[:, None])
    assert torch.equal(w0["dense.k_proj.weight"], model.dense.k_proj.weight)
    record = stats.to_record()
    assert record["qk_clipped"] == stats.n_clipped and len(record["max_logit"]) == 2
    assert record["max_logit_max"] == max(record["max_logit"]) >= 2.0

    measure(model, make_x())
    returned = collect_max_logits(model, reduce=lambda t: torch.full_like(t, 7.0))
    assert torch.equal(returned[0], torch.full((H,), 7.0))
    assert torch.equal(returned[1], torch.tensor([7.0, 7.0, -math.inf, -math.inf]))


# --- (5) a short training run -------------------------------------------------------------

def test_training_with_qk_clip_keeps_every_head_near_tau():
    """Without clipping the max logit grows past 4τ; with it every head stays within τ plus one
    update's growth. The clip acts on the weights measured *before* the step (K2 order: stats in
    the forward, clip after optimizer.step), so the next forward sees γ·(updated weights): at this
    deliberately high LR one Muon update grows a logit by up to ~7%, hence the 10% tolerance.
    Test 1 shows the clip itself is exact."""
    tau = 3.0
    free, _ = train_max_logits(clip=False, tau=tau)
    held, n_clipped = train_max_logits(clip=True, tau=tau)
    free_max, held_max = free.amax(dim=(1, 2)), held.amax(dim=(1, 2))
    print("\nmax logit per step, no clip:", [round(v, 2) for v in free_max.tolist()])
    print("max logit per step, clip τ=3:", [round(v, 2) for v in held_max.tolist()])
    print(f"peak no clip {free_max.max():.2f}, peak clip {held_max.max():.2f}, "
          f"clipped head-steps {n_clipped}")
    assert free_max.max() > 4 * tau
    assert n_clipped > 0
    assert (held <= tau * 1.10).all()


# --- config and trainer ---------------------------------------------------------------------

def test_config_auto_follows_the_optimizer():
    assert config.load(overrides=["optim.name=muon"]).optim.qk_clip_enabled()
    assert not config.load(overrides=["optim.name=adamw"]).optim.qk_clip_enabled()
    assert config.load(overrides=["optim.name=adamw", "optim.qk_clip=on"]).optim.qk_clip_enabled()
    assert not config.load(overrides=["optim.qk_clip=off"]).optim.qk_clip_enabled()
    assert config.OptimConfig().qk_clip_tau == 100.0
    with pytest.raises(config.ConfigError, match="qk_clip"):
        config.load(overrides=["optim.qk_clip=maybe"])
    with pytest.raises(config.ConfigError, match="qk_clip_tau"):
        config.load(overrides=["optim.qk_clip_tau=0"])


def test_trainer_clips_resets_and_logs(tiny_overrides, tmp_path):
    from attnres.train.metrics import read_metrics
    from attnres.train.trainer import Trainer

    cfg = config.load(overrides=tiny_overrides + ["train.steps=3", "optim.qk_clip_tau=0.01"])
    trainer = Trainer(cfg, run_dir=tmp_path / "run")
    layers = attention_layers(trainer.model)
    assert trainer.qk_clip and len(layers) == 2 and all(m.track_max_logit for _, m in layers)
    trainer.train()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 3
    for r in records:
        assert len(r["max_logit"]) == 2 and all(math.isfinite(v) for v in r["max_logit"])
        assert r["qk_clipped"] > 0 and r["max_logit_max"] == max(r["max_logit"])
    assert all(torch.isinf(m.max_logit).all() for _, m in layers)

    off = Trainer(config.load(overrides=tiny_overrides + ["optim.name=adamw"]),
                  run_dir=tmp_path / "off")
    assert not off.qk_clip
    assert not any(m.track_max_logit for _, m in attention_layers(off.model))
