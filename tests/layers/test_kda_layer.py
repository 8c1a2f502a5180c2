"""KDA layer: chunk and recurrent modes agree, cached decoding and chunked prefill equal one pass,
initialisation, gate sign and optimizer tags (docs/BACKBONE.md#kda-parameterisation,
docs/BACKBONE.md#kda-state-and-decoding; docs/OPTIM.md#parameter-routing)."""

import math

import pytest
import torch
import torch.nn.functional as F

import attnres.layers.kda as kda_layer
from attnres import tags
from attnres.layers.kda import KimiDeltaAttention

D, H, HEAD = 16, 2, 8


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def make_layer(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return KimiDeltaAttention(D, H, HEAD, **kw).to(dtype)


def make_x(B, T, dtype=torch.float64, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def output_and_grads(layer, x):
    """The output and the gradients of x and of every parameter under a fixed random probe."""
    x = x.clone().requires_grad_()
    y = layer(x)
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.dtype)
    layer.zero_grad()
    (y * probe).sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad.clone() for n, p in layer.named_parameters()})
    return y.detach(), grads


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)],
                         ids=["fp64", "fp32"])
@pytest.mark.parametrize("chunk_size", [16, 32])
def test_chunk_and_recurrent_modes_agree(dtype, tol, chunk_size):
    layer = make_layer(dtype, chunk_size=chunk_size)
    x = make_x(2, 37, dtype)                                   # 37: not a multiple of C
    layer.mode = "chunk"
    y_chunk, g_chunk = output_and_grads(layer, x)
    layer.mode = "recurrent"
    y_rec, g_rec = output_and_grads(layer, x)
    assert rel(y_chunk, y_rec) < tol
    for name in g_rec:
        assert rel(g_chunk[name], g_rec[name]) < tol, name


@pytest.mark.parametrize("mode", ["auto", "chunk", "recurrent"])
@pytest.mark.parametrize("prefill", [1, 2, 5])                   # 1, 2 < conv width - 1 = 3
def test_prefill_then_decode_equals_full_pass(mode, prefill):
    layer = make_layer(mode=mode).eval()
    x = make_x(2, prefill + 6)
    with torch.no_grad():
        full = layer(x)
        cache = layer.empty_cache()
        outs = [layer(x[:, :prefill], cache)]
        size = cache.nbytes()
        for t in range(prefill, x.shape[1]):
            outs.append(layer(x[:, t:t + 1], cache))
            assert cache.nbytes() == size                           # constant in T
    assert rel(torch.cat(outs, dim=1), full) < 1e-10
    assert cache.state.shape == (2, H, HEAD, HEAD) and cache.state.dtype == torch.float64
    assert cache.q_conv.shape == (2, H * HEAD, 3)


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_chunked_prefill_equals_full_pass(mode):
    layer = make_layer(mode=mode, chunk_size=16)
    x = make_x(2, 5 + 7 + 1 + 20)
    full = layer(x)
    cache = layer.empty_cache()
    pieces = [layer(x[:, a:b], cache) for a, b in [(0, 5), (5, 12), (12, 13), (13, 33)]]
    assert rel(torch.cat(pieces, dim=1), full) < 1e-10


def test_cache_matches_the_last_conv_inputs_and_final_state():
    layer = make_layer(mode="chunk")
    x = make_x(1, 9)
    cache = layer.empty_cache()
    with torch.no_grad():
        layer(x, cache)
    last_inputs = layer.k_proj(x[:, -3:]).transpose(1, 2).detach()   # pre-conv, [B, C, 3]
    torch.testing.assert_close(cache.k_conv, last_inputs, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(cache.state).all() and cache.state.abs().sum() > 0


def test_training_uses_chunk_mode_and_short_eval_uses_recurrent(monkeypatch):
    used = []

    def spy(name):
        op = getattr(kda_layer, name)

        def recorded(*args, **kwargs):
            used.append(name)
            return op(*args, **kwargs)
        monkeypatch.setattr(kda_layer, name, recorded)

    spy("chunk_kda")
    spy("recurrent_kda")
    layer = make_layer()
    layer.train()(make_x(1, 4))
    layer.eval()(make_x(1, 4))
    layer.eval()(make_x(1, 65))
    assert used == ["chunk_kda", "recurrent_kda", "chunk_kda"]


def test_parameter_tags():
    layer = make_layer()
    expected = {name: tags.MUON for name in
                ("q_proj", "k_proj", "v_proj", "f_a_proj", "f_b_proj", "b_proj", "g_a_proj",
                 "g_b_proj", "o_proj")}
    expected.update({name: tags.ADAMW for name in ("q_conv", "k_conv", "v_conv", "o_norm")})
    expected.update(A_log=tags.ADAMW_NO_DECAY, dt_bias=tags.ADAMW_NO_DECAY)
    for name, p in layer.named_parameters():
        assert tags.get_group(p) == expected[name.split(".")[0]], name
    assert {n.split(".")[0] for n, _ in layer.named_parameters()} == set(expected)


def test_shapes_and_init_ranges():
    torch.manual_seed(0)
    layer = KimiDeltaAttention(32, 4, 8, gate_rank=5)
    assert layer.q_conv.weight.shape == (32, 1, 4)
    assert layer.f_a_proj.weight.shape == (5, 32) and layer.f_b_proj.weight.shape == (32, 5)
    assert layer.g_a_proj.weight.shape == (5, 32) and layer.g_b_proj.weight.shape == (32, 5)
    assert layer.b_proj.weight.shape == (4, 32) and layer.o_norm.weight.shape == (8,)
    assert layer.A_log.dtype == layer.dt_bias.dtype == torch.float32
    assert layer.A_log.shape == (4,) and layer.dt_bias.shape == (32,)
    a = layer.A_log.exp()
    assert (a >= 1).all() and (a <= 16).all()
    dt = F.softplus(layer.dt_bias)
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 1e-1 * (1 + 1e-5)).all()
    # log-uniform: the logs spread over most of [log 1e-3, log 1e-1]
    assert dt.log().min() < math.log(3e-3) and dt.log().max() > math.log(3e-2)


def test_gate_is_nonpositive_finite_fp32():
    layer = make_layer(torch.float32)
    x = make_x(2, 8, torch.float32) * 100                        # saturates the softplus
    g = layer.gate(x)
    assert g.dtype == torch.float32 and g.shape == (2, 8, H, HEAD)
    assert torch.isfinite(g).all() and (g <= 0).all()
    with torch.autocast(x.device.type, dtype=torch.bfloat16):      # projections in bf16
        assert layer.gate(x).dtype == torch.float32


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        KimiDeltaAttention(D, H, HEAD, mode="fused")
