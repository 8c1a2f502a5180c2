"""MLA layer: absorbed decode = naive decode, cached runs = one pass, NoPE position-freedom, the
RoPE arm, the QK-Clip max-logit statistic and optimizer tags (docs/BACKBONE.md#mla-without-rope,
docs/OPTIM.md#parameter-routing and docs/OPTIM.md#qk-clip)."""

import pytest
import torch
import torch.nn.functional as F

from attnres import tags
from attnres.layers.mla import MultiHeadLatentAttention

D, H, D_NOPE, D_ROPE, D_V, R_KV = 16, 3, 6, 4, 5, 8


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def make_layer(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(D, H, D_NOPE, D_ROPE, D_V, R_KV, **kw).to(dtype)


def make_x(B, T, dtype=torch.float64, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def run_in_pieces(layer, x, lengths):
    """Feed x through a fresh cache in consecutive pieces of the given lengths."""
    cache, outs, start = layer.empty_cache(), [], 0
    for n in lengths:
        outs.append(layer(x[:, start:start + n], cache))
        start += n
    return torch.cat(outs, dim=1), cache


def explicit_scores(layer, x):
    """Scaled logits [B, H, T, T] for every (query, key) pair, future ones included, written out
    from the weights without going through the layer's forward."""
    B, T, _ = x.shape
    q = (x @ layer.q_proj.weight.T).view(B, T, H, D_NOPE + D_ROPE)
    kv_a = x @ layer.kv_a_proj_with_mqa.weight.T
    c, k_pe = kv_a[..., :R_KV], kv_a[..., R_KV:]
    c = c / (c.pow(2).mean(-1, keepdim=True) + layer.kv_a_layernorm.eps).sqrt()
    c = c * layer.kv_a_layernorm.weight
    k_nope = (c @ layer.kv_b_proj.weight.T).view(B, T, H, D_NOPE + D_V)[..., :D_NOPE]
    k = torch.cat([k_nope, k_pe[:, :, None].expand(B, T, H, D_ROPE)], dim=-1)
    return torch.einsum("bthc,bshc->bhts", q, k) * (D_NOPE + D_ROPE) ** -0.5


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)],
                         ids=["fp64", "fp32"])
@pytest.mark.parametrize("rope", [False, True], ids=["nope", "rope"])
def test_absorbed_decode_equals_naive_decode(dtype, tol, rope):
    x = make_x(2, 10, dtype)
    with torch.no_grad():
        absorbed, _ = run_in_pieces(make_layer(dtype, rope=rope).eval(), x, [6, 1, 1, 2])
        naive, _ = run_in_pieces(make_layer(dtype, rope=rope, decode="naive").eval(), x,
                                 [6, 1, 1, 2])
    assert rel(absorbed[:, 6:], naive[:, 6:]) < tol


@pytest.mark.parametrize("decode", ["absorbed", "naive"])
@pytest.mark.parametrize("rope", [False, True], ids=["nope", "rope"])
@pytest.mark.parametrize("lengths", [[9], [1] * 9, [5, 1, 3], [2, 7]], ids=str)
def test_cached_runs_equal_the_full_pass(decode, rope, lengths):
    layer = make_layer(rope=rope, decode=decode).eval()
    x = make_x(2, 9)
    with torch.no_grad():
        full = layer(x)
        pieces, cache = run_in_pieces(layer, x, lengths)
    assert rel(pieces, full) < 1e-12
    assert cache.length == 9
    assert cache.c.shape == (2, 9, R_KV) and cache.k_pe.shape == (2, 9, D_ROPE)
    assert cache.nbytes() == 2 * 9 * (R_KV + D_ROPE) * 8


def test_cached_prefill_backpropagates_like_the_full_pass():
    layer = make_layer()
    x = make_x(1, 7).requires_grad_()
    grad_full, = torch.autograd.grad(layer(x).square().sum(), x)
    grad_pieces, = torch.autograd.grad(run_in_pieces(layer, x, [3, 4])[0].square().sum(), x)
    assert rel(grad_pieces, grad_full) < 1e-12


def test_nope_cache_entries_do_not_depend_on_position():
    """With NoPE a token's cached (c, k_pe) is the same wherever it sits; RoPE rotates k_pe."""
    prefix, token = make_x(1, 5), make_x(1, 1, seed=3)
    for rope in (False, True):
        layer = make_layer(rope=rope).eval()
        with torch.no_grad():
            _, alone = run_in_pieces(layer, token, [1])
            _, after = run_in_pieces(layer, torch.cat([prefix, token], dim=1), [5, 1])
        assert torch.equal(after.c[:, -1], alone.c[:, 0])
        same_k_pe = torch.allclose(after.k_pe[:, -1], alone.k_pe[:, 0])
        assert same_k_pe != rope


def test_nope_ignores_the_order_of_earlier_tokens_and_rope_does_not():
    """NoPE attention sees a set of visible tokens: reordering the prefix leaves the last output
    unchanged. RoPE makes it position-dependent."""
    x = make_x(2, 8)
    shuffled = torch.cat([x[:, :7][:, torch.randperm(7)], x[:, 7:]], dim=1)
    for rope in (False, True):
        layer = make_layer(rope=rope).eval()
        with torch.no_grad():
            same = torch.allclose(layer(x)[:, -1], layer(shuffled)[:, -1], rtol=1e-10)
        assert same != rope


def test_rope_arm_runs_and_differs_from_nope():
    x = make_x(2, 6)
    with torch.no_grad():
        nope = make_layer(rope=False)(x)
        rope = make_layer(rope=True)(x)
    assert torch.isfinite(rope).all()
    torch.testing.assert_close(rope[:, 0], nope[:, 0])    # position 0: the rotation is identity
    assert rel(rope[:, 1:], nope[:, 1:]) > 1e-3


def test_max_logit_is_the_running_max_of_visible_scaled_scores():
    layer = make_layer().train()
    layer.track_max_logit = True
    assert layer.max_logit.shape == (H,) and torch.isinf(layer.max_logit).all()
    assert "max_logit" not in layer.state_dict()

    x1, x2 = make_x(2, 7), make_x(3, 5, seed=4)
    visible = torch.ones(7, 7, dtype=torch.bool).tril()

    def visible_max(x):
        T = x.shape[1]
        return explicit_scores(layer, x).masked_fill(~visible[:T, :T], float("-inf")).amax(
            dim=(0, 2, 3))

    layer(x1)
    torch.testing.assert_close(layer.max_logit, visible_max(x1).detach(), rtol=1e-12, atol=0)
    layer(x2)
    expected = torch.maximum(visible_max(x1), visible_max(x2)).detach()
    torch.testing.assert_close(layer.max_logit, expected, rtol=1e-12, atol=0)

    layer.eval()(make_x(2, 7, seed=5) * 100)                 # eval forwards are not collected
    torch.testing.assert_close(layer.max_logit, expected, rtol=1e-12, atol=0)
    layer.train()
    layer.track_max_logit = False
    layer(make_x(2, 7, seed=5) * 100)                         # nor untracked training forwards
    torch.testing.assert_close(layer.max_logit, expected, rtol=1e-12, atol=0)

    layer.reset_max_logit()
    assert torch.isinf(layer.max_logit).all() and (layer.max_logit < 0).all()


def test_max_logit_ignores_larger_masked_future_scores():
    """Weights arranged so the logit is s_ij = w · x_i[0] · x_j[1] (q_pe · k_pe only): with
    x_0 = e_0 and x_1 = e_1 the only non-zero logit is s_01, a future key for query 0."""
    layer = make_layer().train()
    layer.track_max_logit = True
    with torch.no_grad():
        layer.q_proj.weight.zero_()
        layer.q_proj.weight.view(H, D_NOPE + D_ROPE, D)[:, D_NOPE, 0] = 3.0
        layer.kv_a_proj_with_mqa.weight[R_KV:].zero_()
        layer.kv_a_proj_with_mqa.weight[R_KV, 1] = 2.0
    x = F.one_hot(torch.arange(2), D).to(torch.float64)[None]      # [1, 2, D]: e_0, e_1
    layer(x)
    scores = explicit_scores(layer, x).detach()
    assert (scores.amax(dim=(0, 2, 3)) > 1).all()                   # the masked entry s_01
    assert torch.equal(layer.max_logit, torch.zeros(H, dtype=torch.float64))


def test_parameter_tags_and_shapes():
    layer = make_layer()
    expected = {"q_proj.weight": (tags.MUON, (H * (D_NOPE + D_ROPE), D)),
                "kv_a_proj_with_mqa.weight": (tags.MUON, (R_KV + D_ROPE, D)),
                "kv_a_layernorm.weight": (tags.ADAMW, (R_KV,)),
                "kv_b_proj.weight": (tags.MUON, (H * (D_NOPE + D_V), R_KV)),
                "o_proj.weight": (tags.MUON, (D, H * D_V))}
    got = {n: (tags.get_group(p), tuple(p.shape)) for n, p in layer.named_parameters()}
    assert got == expected


def test_bad_decode_is_rejected():
    with pytest.raises(ValueError, match="decode"):
        MultiHeadLatentAttention(D, H, D_NOPE, D_ROPE, D_V, R_KV, decode="fused")
