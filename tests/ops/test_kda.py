"""KDA ops: the chunkwise algorithm against the recurrence (outputs, final state, every gradient),
state carrying, strong decays, the scalar-gate (Gated DeltaNet) special case and decoding."""

import pytest
import torch
import torch.nn.functional as F

from attnres.ops.kda import chunk_kda, kda_decode_step, recurrent_kda

B, H, K, V = 2, 2, 8, 12        # K ≠ V so a transposed state cannot pass


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def make_inputs(T, dtype=torch.float64, seed=0, h0=False, g=None):
    """q, k L2-normalised; g = -softplus(·) ≤ 0 (about -0.8 per step); beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    inputs = dict(
        q=F.normalize(randn(B, T, H, K), dim=-1),
        k=F.normalize(randn(B, T, H, K), dim=-1),
        v=randn(B, T, H, V),
        g=-F.softplus(randn(B, T, H, K)) if g is None else g,
        beta=torch.sigmoid(randn(B, T, H)),
        initial_state=randn(B, H, K, V) if h0 else None,
    )
    return {n: None if x is None else x.to(dtype).requires_grad_() for n, x in inputs.items()}


def plain(inputs):
    """The given inputs detached, without the ones that are None."""
    return {n: x.detach() for n, x in inputs.items() if x is not None}


def run_with_grads(op, inputs, seed=1, **kw):
    """Output, final state and the gradients of a random linear function of both."""
    o, s = op(**inputs, output_final_state=True, **kw)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    ds = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.dtype)
    leaves = {n: x for n, x in inputs.items() if x is not None}
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), list(leaves.values()))
    return o, s, dict(zip(leaves, grads))


# ---------------------------------------------------------------- chunk == recurrent

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4)}   # (outputs, gradients)


@pytest.mark.parametrize("h0", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("chunk_size", [4, 8, 16, 32, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_chunk_matches_recurrent(dtype, chunk_size, h0):
    inputs = make_inputs(T=100, dtype=dtype, h0=h0)            # 100 is no multiple of C
    o_ref, s_ref, g_ref = run_with_grads(recurrent_kda, inputs)
    o, s, grads = run_with_grads(chunk_kda, inputs, chunk_size=chunk_size)
    tol_out, tol_grad = TOL[dtype]
    assert o.dtype == dtype and s.dtype == dtype
    assert rel(o, o_ref) <= tol_out
    assert rel(s, s_ref) <= tol_out
    assert set(grads) == set(g_ref)
    for name in grads:
        assert rel(grads[name], g_ref[name]) <= tol_grad, name


def test_bf16_inputs_give_bf16_output_and_fp32_state():
    inputs = make_inputs(T=40, dtype=torch.bfloat16)
    inputs["g"] = inputs["g"].detach().float()                 # the layer keeps g in fp32
    o, s = chunk_kda(**inputs, output_final_state=True, chunk_size=16)
    o_ref, s_ref = recurrent_kda(**inputs, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert rel(o.float(), o_ref.float()) < 1e-2 and rel(s, s_ref) < 1e-4


def test_subchunk_size_does_not_change_the_result():
    inputs = make_inputs(T=64)
    o16, _ = chunk_kda(**inputs, chunk_size=64, subchunk_size=16)
    for sub in (8, 32, 64):
        o, _ = chunk_kda(**inputs, chunk_size=64, subchunk_size=sub)
        assert rel(o, o16) <= 1e-12


@pytest.mark.parametrize("chunk_size,segment", [(16, 32), (8, 20), (16, 0)],
                         ids=["C16-seg32", "C8-seg24", "C16-one-segment"])
def test_segments_match_recurrent_with_every_gradient(chunk_size, segment):
    """Segments (a segment size rounded up to whole chunks; 0 = one segment) carry the state
    between them; outputs, final state and every gradient still match the recurrence."""
    inputs = make_inputs(T=100, h0=True, seed=3)
    o_ref, s_ref, g_ref = run_with_grads(recurrent_kda, inputs)
    o, s, grads = run_with_grads(chunk_kda, inputs, chunk_size=chunk_size, segment_size=segment)
    assert rel(o, o_ref) <= 1e-10 and rel(s, s_ref) <= 1e-10
    for name in g_ref:
        assert rel(grads[name], g_ref[name]) <= 1e-10, name


def test_segmenting_gives_the_one_pass_result():
    """Chunks never straddle segments, so segments change only which tensors are batched."""
    x = plain(make_inputs(T=150, h0=True, seed=4))
    one, s_one = chunk_kda(**x, output_final_state=True, segment_size=0)
    seg, s_seg = chunk_kda(**x, output_final_state=True, segment_size=48)
    assert rel(seg, one) <= 1e-13 and rel(s_seg, s_one) <= 1e-13


def test_defaults_match_the_former_chunking_in_fp32():
    """The defaults (C = 16, c = 4, segments of 256) against C = 64, c = 16 in one pass and
    against the recurrence, fp32 at K = V = 64 over 2,100 tokens: 1e-5, the fp32 tolerance of
    the chunk-vs-recurrent tests (a few ulps per step of a contracting recurrence)."""
    gen = torch.Generator().manual_seed(5)
    T, Hh, D = 2100, 1, 64
    x = dict(q=F.normalize(torch.randn(1, T, Hh, D, generator=gen), dim=-1),
             k=F.normalize(torch.randn(1, T, Hh, D, generator=gen), dim=-1),
             v=torch.randn(1, T, Hh, D, generator=gen),
             g=-F.softplus(torch.randn(1, T, Hh, D, generator=gen)),
             beta=torch.sigmoid(torch.randn(1, T, Hh, generator=gen)))
    new, _ = chunk_kda(**x)
    old, _ = chunk_kda(**x, chunk_size=64, subchunk_size=16, segment_size=0)
    ref, _ = recurrent_kda(**x)
    assert rel(new, old) <= 1e-5 and rel(new, ref) <= 1e-5


# ---------------------------------------------------------------- state carrying

@pytest.mark.parametrize("op", [recurrent_kda, chunk_kda], ids=["recurrent", "chunk"])
def test_split_sequence_carrying_state_equals_one_pass(op):
    kw = {"chunk_size": 16} if op is chunk_kda else {}
    x = make_inputs(T=70, h0=True)
    o_full, s_full = op(**x, output_final_state=True, **kw)
    first = {n: t[:, :37] for n, t in x.items() if n != "initial_state"}
    second = {n: t[:, 37:] for n, t in x.items() if n != "initial_state"}
    o1, s1 = op(**first, initial_state=x["initial_state"], output_final_state=True, **kw)
    o2, s2 = op(**second, initial_state=s1, output_final_state=True, **kw)
    assert rel(torch.cat([o1, o2], dim=1), o_full) <= 1e-12
    assert rel(s2, s_full) <= 1e-12


# ------------------------------------------------------ strong decay (docs/BACKBONE.md#kda-numerics)

def strong_gate(T, dtype):
    """Mostly -3 per step (cumulative ≈ -190 per 64-token chunk), with steps near -60 on a few
    channels; channel 0 decays weakly so some state survives a whole chunk."""
    gen = torch.Generator().manual_seed(7)
    g = torch.full((B, T, H, K), -3.0, dtype=torch.float64)
    g += 0.5 * torch.rand(B, T, H, K, generator=gen, dtype=torch.float64)
    spikes = torch.rand(B, T, H, K, generator=gen, dtype=torch.float64) < 0.1
    g = torch.where(spikes, torch.full_like(g, -60.0), g)
    g[..., 0] = -0.01
    return g.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_strong_decay_stays_finite_and_matches(dtype):
    T = 150
    g = strong_gate(T, dtype)
    assert (-g[0, :64, 0, 1:].sum(0)).min() > 100               # in-chunk decay exceeds 100
    inputs = make_inputs(T=T, dtype=dtype, h0=True, g=g)
    o_ref, s_ref, g_ref = run_with_grads(recurrent_kda, inputs)
    o, s, grads = run_with_grads(chunk_kda, inputs, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
    tol_out, tol_grad = TOL[dtype]
    assert rel(o, o_ref) <= tol_out and rel(s, s_ref) <= tol_out
    for name in grads:
        assert rel(grads[name], g_ref[name]) <= tol_grad, name


# ---------------------------------------------------------------- Gated DeltaNet special case

def gated_delta_rule(q, k, v, a, beta, scale):
    """Scalar-gate delta rule, written independently: per head, S ← a·S; S ← S + β k (v − Sᵀk)ᵀ;
    o = Sᵀ q. Plain loops over batch, head and time, state [K, V]."""
    Bq, T, Hq, Kq = q.shape
    o = torch.zeros(Bq, T, Hq, v.shape[-1], dtype=v.dtype)
    for b in range(Bq):
        for h in range(Hq):
            S = torch.zeros(Kq, v.shape[-1], dtype=v.dtype)
            for t in range(T):
                kt, vt = k[b, t, h], v[b, t, h]
                S = a[b, t, h] * S
                S = S + beta[b, t, h] * torch.outer(kt, vt - S.T @ kt)
                o[b, t, h] = S.T @ (scale * q[b, t, h])
    return o


def test_scalar_gate_reduces_to_gated_deltanet():
    T = 45
    gen = torch.Generator().manual_seed(3)
    log_a = -F.softplus(torch.randn(B, T, H, generator=gen, dtype=torch.float64))
    x = plain(make_inputs(T=T, g=log_a[..., None].expand(B, T, H, K)))
    o_gdn = gated_delta_rule(x["q"], x["k"], x["v"], log_a.exp(), x["beta"], scale=K ** -0.5)
    o_rec, _ = recurrent_kda(**x)
    o_chunk, _ = chunk_kda(**x, chunk_size=16)
    assert rel(o_rec, o_gdn) <= 1e-12
    assert rel(o_chunk, o_gdn) <= 1e-12


# ---------------------------------------------------------------- decoding

def test_decode_steps_equal_recurrent():
    x = plain(make_inputs(T=20, h0=True))
    o_ref, s_ref = recurrent_kda(**x, output_final_state=True)
    S, outs = x["initial_state"], []
    for t in range(20):
        o_t, S = kda_decode_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], x["g"][:, t],
                                 x["beta"][:, t], S)
        outs.append(o_t)
    assert rel(torch.stack(outs, dim=1), o_ref) <= 1e-12
    assert rel(S, s_ref) <= 1e-12


def test_chunk_prefill_then_decode_equals_full_pass():
    x = plain(make_inputs(T=40))
    o_full, s_full = chunk_kda(**x, output_final_state=True, chunk_size=16)
    o_pre, S = chunk_kda(**{n: t[:, :33] for n, t in x.items()}, output_final_state=True,
                         chunk_size=16)
    outs = [o_pre]
    for t in range(33, 40):
        o_t, S = kda_decode_step(*(x[n][:, t] for n in ("q", "k", "v", "g", "beta")), S)
        outs.append(o_t[:, None])
    assert rel(torch.cat(outs, dim=1), o_full) <= 1e-12
    assert rel(S, s_full) <= 1e-12


# ---------------------------------------------------------------- shape checks

def _bad(name, shape):
    x = plain(make_inputs(T=10, h0=True))
    x[name] = torch.zeros(shape, dtype=torch.float64)
    return x


BAD = {
    "q_3d": _bad("q", (B, 10, H * K)),
    "k_mismatch": _bad("k", (B, 10, H, K + 1)),
    "g_mismatch": _bad("g", (B, 10, H, 1)),
    "v_wrong_T": _bad("v", (B, 9, H, V)),
    "beta_4d": _bad("beta", (B, 10, H, 1)),
    "state_transposed": _bad("initial_state", (B, H, V, K)),
}


@pytest.mark.parametrize("op", [recurrent_kda, chunk_kda], ids=["recurrent", "chunk"])
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_shapes_raise(op, case):
    with pytest.raises(ValueError):
        op(**BAD[case])


def test_bad_chunk_sizes_raise():
    x = plain(make_inputs(T=10))
    with pytest.raises(ValueError):
        chunk_kda(**x, chunk_size=0)
    with pytest.raises(ValueError):
        chunk_kda(**x, chunk_size=24, subchunk_size=16)
    with pytest.raises(ValueError, match="segment_size"):
        chunk_kda(**x, segment_size=-1)


def test_decode_step_bad_shapes_raise():
    x = {n: t[:, 0] for n, t in plain(make_inputs(T=1)).items()}
    state = torch.zeros(B, H, K, V, dtype=torch.float64)
    with pytest.raises(ValueError):
        kda_decode_step(x["q"][..., None], x["k"], x["v"], x["g"], x["beta"], state)
    with pytest.raises(ValueError):
        kda_decode_step(x["q"], x["k"], x["v"], x["g"], x["beta"], state.transpose(-1, -2))
    with pytest.raises(ValueError):
        kda_decode_step(x["q"], x["k"], x["v"], x["g"], x["beta"][..., None], state)
