"""The Kimi-Linear backbone: layout, every residual kind, invariants and mixed-cache decoding."""

import pytest
import torch

from attnres.layers.kda import KimiDeltaAttention
from attnres.layers.mla import MultiHeadLatentAttention
from attnres.layers.mlp import SwiGLU
from attnres.layers.moe import MoE
from attnres.config import ResidualConfig
from attnres.models.kimi_linear import KimiLinearLM, kimi_linear_config


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(residual="prenorm", seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("vocab_size", 64)
    fields = ResidualConfig.__dataclass_fields__
    res = ResidualConfig(residual, **{k: kw.pop(k) for k in list(kw) if k in fields})
    return KimiLinearLM(kimi_linear_config("tiny", residual=res, **kw))


def test_layout_is_3_to_1_with_the_last_layer_mla_and_the_first_ffn_dense():
    model = build(n_layers=6)
    mixers = [type(layer.self_attn) for layer in model.layers]
    assert mixers == [KimiDeltaAttention] * 3 + [MultiHeadLatentAttention, KimiDeltaAttention,
                                                 MultiHeadLatentAttention]
    ffns = [type(layer.mlp) for layer in model.layers]
    assert ffns == [SwiGLU] + [MoE] * 5
    custom = build(layer_pattern="KM")
    assert [type(layer.self_attn) for layer in custom.layers] == [KimiDeltaAttention, MultiHeadLatentAttention] * 2


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="top_k"):
        kimi_linear_config("tiny", top_k=1)
    with pytest.raises(ValueError, match="layer_pattern"):
        kimi_linear_config("tiny", layer_pattern="KKX")
    with pytest.raises(ValueError, match="preset"):
        kimi_linear_config("huge")


@pytest.mark.parametrize("residual,S", [("prenorm", 4), ("full", 1), ("block", 2), ("block", 4)])
def test_every_residual_kind_trains_a_step(residual, S):
    model = build(residual, block_size=S)
    x = torch.randint(0, 64, (2, 33))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None and "layers.0.res_mixer" not in n]
    assert not missing, missing


def test_backbone_init_is_independent_of_the_residual_kind():
    a, b = build("prenorm").state_dict(), build("block", block_size=2).state_dict()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.mark.parametrize("residual", ["prenorm", "block"])
def test_greedy_decoding_with_mixed_caches_equals_full_recomputation(residual):
    model = build(residual, block_size=2).double().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("query"):
                p.normal_(0, 0.5)
    prompt = torch.randint(0, 64, (2, 6))
    cached = model.generate(prompt, 24, temperature=0)
    full = model.generate(prompt, 24, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # chunked prefill + decode gives the logits of one pass (KDA state + conv cache, MLA latents)
    idx = torch.randint(0, 64, (1, 40))
    cache = model.new_cache()
    with torch.no_grad():
        parts = [model(idx[:, :17], cache=cache), model(idx[:, 17:18], cache=cache),
                 model(idx[:, 18:], cache=cache)]
        assert rel(torch.cat(parts, dim=1), model(idx)) < 1e-10
    assert cache.length == 40


def test_cache_bytes_kda_constant_mla_grows():
    model = build().eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 10)), cache=cache)
        kda_10 = sum(c.nbytes() for c, l in zip(cache.layers, model.layers) if isinstance(l.self_attn, KimiDeltaAttention))
        mla_10 = sum(c.nbytes() for c, l in zip(cache.layers, model.layers) if isinstance(l.self_attn, MultiHeadLatentAttention))
        model(torch.randint(0, 64, (1, 20)), cache=cache)
        kda_30 = sum(c.nbytes() for c, l in zip(cache.layers, model.layers) if isinstance(l.self_attn, KimiDeltaAttention))
        mla_30 = sum(c.nbytes() for c, l in zip(cache.layers, model.layers) if isinstance(l.self_attn, MultiHeadLatentAttention))
    assert kda_10 == kda_30 > 0
    assert mla_30 == 3 * mla_10


def test_active_parameters_count_top_k_of_the_experts():
    model = build()
    c = model.cfg
    n_moe = c.n_layers - c.first_k_dense
    routed = 3 * c.n_experts * c.d_expert * c.d_model
    assert model.num_params(non_embedding=True) - model.active_params() == n_moe * routed * (c.n_experts - c.top_k) // c.n_experts
