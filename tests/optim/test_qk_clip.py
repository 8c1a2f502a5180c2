"""QK-Clip (docs/OPTIM.md#qk-clip): per-head max logits, the γ rule, the per-head weight scalings."""

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnres import config
from attnres.bench.qk_clip import train_max_logits
from attnres.layers import attention as attention_module
from attnres.layers.attention import (
    Attention,
    apply_rotary,
    max_logit_bound,
    max_logit_slack,
    rotary_tables,
    visible_max_logit,
)
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


# --- (6) tracking with the bound (docs/OPTIM.md#qk-clip-tracking-cost) -------------------------

def track(module, xs, tau, autocast=None):
    """[n_layers, H] recorded by training-mode forwards over the batches `xs`, tracking with
    `tau` (None: exact; +inf: every head's bound)."""
    module.train()
    enable_tracking(module, tau=tau)
    reset_max_logits(module)
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        for x in xs:
            module(x)
    return collect_max_logits(module)


@pytest.mark.parametrize("chunk_elems", [None, 40], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_bound_tracking_makes_the_exact_decisions(kind, chunk_elems, monkeypatch):
    """Heads at or below τ by their bound skip the exact max, the others get it: γ and every
    weight after the clip are bitwise those of exact tracking. Negative control: recording the
    bound for every head (τ = +inf in the layers) changes γ."""
    if chunk_elems:  # queries one or two at a time, the subset calls included
        monkeypatch.setattr(attention_module, "MAX_LOGIT_CHUNK_ELEMS", chunk_elems)
    layer, xs = LAYERS[kind](), [make_x(2, 9, seed=1), make_x(3, 7, seed=2)]
    exact, bound = track(layer, xs, None)[0], track(layer, xs, math.inf)[0]
    tau = bound[:2].max().item()                      # the first key group lies under τ
    assert (bound >= exact).all() and (exact > tau).sum() >= 1 and (bound <= tau).sum() >= 2
    runs = {}
    for name, layer_tau in (("exact", None), ("bound", tau), ("control", math.inf)):
        m = copy.deepcopy(layer)
        recorded = track(m, xs, layer_tau)[0]
        runs[name] = recorded, apply_qk_clip(m, tau), snapshot(m)
    (rec, stats, weights), (ref_rec, ref, ref_weights) = runs["bound"], runs["exact"]
    assert ref.exact and not stats.exact and "max_logit_bound" in stats.to_record()
    assert stats.n_clipped == ref.n_clipped >= 1
    assert torch.equal(stats.gamma, ref.gamma)
    assert all(torch.equal(weights[n], ref_weights[n]) for n in ref_weights)
    skipped = bound <= tau
    assert torch.equal(rec[~skipped], ref_rec[~skipped])        # the exact path: the same values
    assert torch.equal(rec[skipped], bound[skipped]) and (rec[skipped] > ref_rec[skipped]).all()
    assert not torch.equal(runs["control"][1].gamma, ref.gamma)


def test_the_bound_is_an_upper_bound_and_tight_for_aligned_vectors():
    """scale·max‖q‖·max‖k‖·(1 + slack) ≥ every fp32-computed scaled logit, masked or not: random
    q, k (GQA, norms over six decades) and adversarial ones, k_j parallel to q_i, where
    Cauchy–Schwarz is an equality: there the bound is within its slack of the exact max, so a
    bound too small (or too loose) by more than the slack fails."""
    gen = torch.Generator().manual_seed(0)
    slack = max_logit_slack(torch.float32)
    for B, Hq, Hk, T, hd in [(2, 4, 2, 9, 8), (1, 8, 1, 33, 64), (3, 2, 2, 5, 128)]:
        for trial in range(5):
            q = torch.randn(B, Hq, T, hd, generator=gen) * 10 ** (torch.rand(B, Hq, T, 1, generator=gen) * 6 - 3)
            k = torch.randn(B, Hk, T, hd, generator=gen) * 10 ** (torch.rand(B, Hk, T, 1, generator=gen) * 6 - 3)
            if trial >= 2:  # adversarial: every key parallel to the longest query of its group's first head
                first = q[:, ::Hq // Hk]                                          # [B, Hk, T, hd]
                longest = first.norm(dim=-1).argmax(dim=-1)[..., None, None].expand(-1, -1, 1, hd)
                k = first.gather(2, longest) * torch.rand(B, Hk, T, 1, generator=gen) * 3
            bound = max_logit_bound(q.square().sum(-1), k.square().sum(-1), 0.3, slack)
            scores = q @ k.repeat_interleave(Hq // Hk, dim=1).transpose(-1, -2) * 0.3   # fp32, all pairs
            assert (bound >= scores.abs().amax(dim=(0, 2, 3))).all(), (B, Hq, Hk, trial)
            if trial >= 2:
                top = (q.double() @ k.double().repeat_interleave(Hq // Hk, 1).transpose(-1, -2)
                       * 0.3).amax(dim=(0, 2, 3))
                firsts = slice(None, None, Hq // Hk)          # the heads the keys align with
                torch.testing.assert_close(bound[firsts].double(), top[firsts] * (1 + slack),
                                           rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", ["mha", "gqa", "mla-rope", "mla-bf16", "mla-absorbed"])
def test_layers_record_an_upper_bound(case):
    """τ = +inf: every head records its bound, which is ≥ the exact max; also for MLA's bf16
    scores (autocast) and its absorbed path (a cache in training mode)."""
    layer = LAYERS["mla-rope" if case.startswith("mla") else case]()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case == "mla-bf16" else None
    for seed in range(4):
        xs = [make_x(2, 9, seed=seed) * (1 + 4 * seed)]
        if case == "mla-absorbed":
            cache = layer.empty_cache()
            with torch.no_grad():
                layer.train()(make_x(2, 5, seed=50 + seed), cache)
            layer.decode = "absorbed"

            def run(tau, cache=cache):
                enable_tracking(layer, tau=tau)
                reset_max_logits(layer)
                with torch.no_grad():
                    layer(xs[0], copy.deepcopy(cache))
                return collect_max_logits(layer)[0]
            exact, bound = run(None), run(math.inf)
        else:
            exact, bound = track(layer, xs, None, autocast)[0], track(layer, xs, math.inf, autocast)[0]
        assert torch.isfinite(exact).all() and (bound >= exact).all(), (case, seed)


def test_the_exact_max_is_computed_only_for_heads_over_their_bound(monkeypatch):
    """Dense GQA: τ above every bound: no q·kᵀ at all; below every bound: one call over all
    heads; in between: one call over the key groups with a head over τ."""
    layer, xs = make_attention(2), [make_x(2, 9, seed=1)]
    bound = track(layer, xs, math.inf)[0]
    calls = []
    real = attention_module.visible_max_logit

    def spy(q, k, *args):
        calls.append((q.shape[1], k.shape[1]))
        return real(q, k, *args)

    monkeypatch.setattr(attention_module, "visible_max_logit", spy)
    for tau, want in ((bound.max().item(), []), (-math.inf, [(H, 2)]),
                      (bound[:2].max().item(), [(2, 1)])):
        calls.clear()
        track(layer, xs, tau)
        assert calls == want, tau


def test_trainer_tracks_exactly_on_logged_steps_and_decides_exactly_on_the_others(
        tiny_overrides, tmp_path, monkeypatch):
    """Two runs of the same GQA model, one tracking exactly every step (log_every 1), one with
    log_every 2 (the bound on steps 1 and 3): after every step the weights are bitwise the same
    and the same heads are clipped; on the logged steps 2, 4, 5 the per-head maxima and the
    record are equal; on steps 1 and 3 the record is named `max_logit_bound` and some heads hold
    a value strictly above the exact one (negative control: the bound did run)."""
    from attnres.train import trainer as trainer_module

    stats = []

    def keep(*args, **kwargs):
        stats.append(apply_qk_clip(*args, **kwargs))
        return stats[-1]

    monkeypatch.setattr(trainer_module, "apply_qk_clip", keep)
    overrides = tiny_overrides + ["model.n_heads=4", "model.n_kv_heads=2", "train.steps=5",
                                  "optim.qk_clip_tau=0.3"]
    runs = []
    for log_every in (1, 2):
        t = trainer_module.Trainer(config.load(overrides=overrides + [f"train.log_every={log_every}"]),
                                   run_dir=tmp_path / f"log{log_every}")
        with torch.no_grad():  # spread the heads: two far under τ, two over it
            for _, m in attention_layers(t.model):
                m.q_proj.weight.view(4, -1, m.q_proj.weight.shape[1]).mul_(
                    torch.tensor([0.1, 0.5, 4.0, 10.0])[:, None, None])
        runs.append(t)
    ref, t = runs
    above = clipped = 0
    for step in range(1, 6):
        for run in runs:
            run.train_step()
            run.step += 1
        want, got = stats[-2:]
        assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(),
                                                     t.model.state_dict().values())), step
        assert torch.equal(got.gamma, want.gamma) and want.exact, step
        clipped += want.n_clipped
        if step in (2, 4, 5):
            assert got.exact and torch.equal(got.max_logit, want.max_logit), step
            assert t._qk_record == ref._qk_record, step
        else:
            assert not got.exact and "max_logit" not in t._qk_record
            assert t._qk_record["max_logit_bound"] == got.to_record()["max_logit_bound"]
            assert (got.max_logit >= want.max_logit).all(), step
            above += int((got.max_logit > want.max_logit).sum())
    assert clipped >= 1 and above >= 1
