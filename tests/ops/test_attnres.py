"""The depth-attention read: fast paths against the reference, and the invariants of
docs/THEORY.md#invariants."""

from __future__ import annotations

import pytest
import torch

from attnres.ops.attnres import (
    IMPLS,
    depth_attention,
    merged_depth_attention,
    naive_depth_attention,
    phase1,
    recompute_depth_attention,
    source_inv_rms,
    two_phase_depth_attention,
)

FAST = ("recompute", "two_phase")
ALL = ("naive", "recompute", "two_phase")
SHAPES = {"d": (16,), "BTd": (2, 5, 16)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖₂ / ‖b‖₂ over the whole tensor (docs/THEORY.md#tolerances), in fp64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make(n, shape, dtype=torch.float64, seed=0, gain=True):
    """Sources of unequal scale, a query giving logits of order 1, and a gain near 1."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    sources = [(torch.randn(shape, generator=gen) * (1 + i % 3)).to(dtype) for i in range(n)]
    query = torch.randn(d, generator=gen, dtype=pdt) * (2 / d**0.5)
    weight = 1 + 0.3 * torch.randn(d, generator=gen, dtype=pdt) if gain else None
    grad_out = torch.randn(shape, generator=gen).to(dtype)
    return query, sources, weight, grad_out


def run(fn, query, sources, weight, grad_out):
    """Output and gradients [h, ∂w, ∂g, ∂v_0..∂v_{n-1}] of fn on fresh leaves."""
    q = query.detach().clone().requires_grad_()
    g = None if weight is None else weight.detach().clone().requires_grad_()
    vs = [v.detach().clone().requires_grad_() for v in sources]
    h = fn(q, vs, g)
    h.backward(grad_out)
    return [h.detach(), q.grad] + ([] if g is None else [g.grad]) + [v.grad for v in vs]


def impl_fn(impl, eps=1e-6):
    return lambda q, vs, g: depth_attention(q, vs, g, eps=eps, impl=impl)


def assert_all_close(got, ref, tol):
    assert len(got) == len(ref)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert a.dtype == b.dtype, f"tensor {k}: {a.dtype} vs {b.dtype}"
        assert rel(a, b) <= tol, f"tensor {k}: rel {rel(a, b):.3e} > {tol}"


# ---------------------------------------------------------------- agreement with the reference


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n", [2, 3, 5, 9], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("impl", FAST)
def test_matches_reference_fp64(impl, n, shape):
    args = make(n, shape)
    assert_all_close(run(impl_fn(impl), *args), run(impl_fn("naive"), *args), 1e-12)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n", [2, 3, 5, 9], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("impl", FAST)
def test_matches_reference_fp32(impl, n, shape):
    args = make(n, shape, torch.float32, seed=1)
    assert_all_close(run(impl_fn(impl), *args), run(impl_fn("naive"), *args), 1e-5)


@pytest.mark.parametrize("impl", FAST)
def test_matches_reference_without_gain(impl):
    args = make(4, (3, 16), gain=False, seed=2)
    assert_all_close(run(impl_fn(impl), *args), run(impl_fn("naive"), *args), 1e-12)


@pytest.mark.parametrize("impl", FAST)
def test_zero_query_still_has_query_gradient(impl):
    # docs/THEORY.md#the-recomputing-backward: with w = 0 the key path of ∂v vanishes but ∂w does not.
    query, sources, weight, grad_out = make(4, (2, 3, 16), seed=3)
    query = torch.zeros_like(query)
    got = run(impl_fn(impl), query, sources, weight, grad_out)
    assert_all_close(got, run(impl_fn("naive"), query, sources, weight, grad_out), 1e-12)
    assert got[1].abs().max() > 0


@pytest.mark.parametrize("gain", [True, False], ids=["gain", "no_gain"])
@pytest.mark.parametrize("impl", FAST)
def test_gradcheck(impl, gain):
    query, sources, weight, _ = make(3, (2, 3, 4), seed=4, gain=gain)
    inputs = [query.requires_grad_()] + ([weight.requires_grad_()] if gain else [])
    inputs += [v.requires_grad_() for v in sources]

    def fn(*xs):
        q, g = xs[0], (xs[1] if gain else None)
        return depth_attention(q, list(xs[2 if gain else 1 :]), g, impl=impl)

    assert torch.autograd.gradcheck(fn, inputs)


# ------------------------------------------- precomputed inverse RMS (a stream shares it)


def with_rms(which):
    """recompute with the inverse RMS of the sources in `which` ("all", "some") handed in,
    computed from the very tensors read (as the stream does), without gradient."""
    def fn(q, vs, g):
        rms = [source_inv_rms(v, 1e-6) if which == "all" or i % 2 else None
               for i, v in enumerate(vs)]
        return depth_attention(q, vs, g, eps=1e-6, impl="recompute", rms=rms)
    return fn


@pytest.mark.parametrize("which", ["all", "some"])
@pytest.mark.parametrize("n", [2, 5, 9], ids=lambda n: f"n{n}")
def test_precomputed_rms_matches_reference_fp64(n, which):
    args = make(n, (2, 5, 16), seed=21)
    assert_all_close(run(with_rms(which), *args), run(impl_fn("naive"), *args), 1e-12)


def test_precomputed_rms_fp32_and_gradcheck():
    args = make(5, (2, 5, 16), torch.float32, seed=22)
    assert_all_close(run(with_rms("all"), *args), run(impl_fn("naive"), *args), 1e-5)
    query, sources, weight, _ = make(3, (2, 3, 4), seed=23)
    inputs = [query.requires_grad_(), weight.requires_grad_()] + [v.requires_grad_() for v in sources]
    assert torch.autograd.gradcheck(lambda q, g, *vs: with_rms("all")(q, list(vs), g), inputs)


def test_precomputed_rms_is_used():
    """A wrong r must change the result: the op really reads what it is given."""
    query, sources, weight, _ = make(3, (4, 16), seed=24)
    rms = [source_inv_rms(v, 1e-6) for v in sources]
    good = depth_attention(query, sources, weight, rms=rms)
    bad = depth_attention(query, sources, weight, rms=[rms[0] * 2] + rms[1:])
    assert rel(good, naive_depth_attention(query, sources, weight)) <= 1e-13
    assert rel(bad, good) > 1e-3
    with pytest.raises(ValueError, match="rms has 2 entries"):
        depth_attention(query, sources, weight, rms=rms[:2])


def test_precomputed_rms_saves_only_source_references():
    n, shape = 5, (2, 8, 16)
    query, sources, weight, _ = make(n, shape, torch.float32, seed=25)
    query.requires_grad_()
    sources = [v.requires_grad_() for v in sources]
    rms = [source_inv_rms(v, 1e-6) for v in sources]
    fn = lambda: depth_attention(query, sources, weight, rms=rms)  # noqa: E731
    assert oversized_saves(fn, sources, n * shape[0] * shape[1]) == []


# ---------------------------------------------------------------- two-phase pieces


def phase2_fn(n_phase1, k, queries, weights):
    """A read through phase 1 of a whole group of queries, keeping query k, then the merge.

    `queries`/`weights` are the other group members' detached parameters; slot k is replaced
    by the differentiated query so that gradients reach it only through the merge's Function.
    """

    def fn(q, vs, g):
        qs = queries.clone()
        qs[k] = q.detach()
        gs = None
        if g is not None:
            gs = weights.clone()
            gs[k] = g.detach()
        o1, lse1 = phase1(qs, vs[:n_phase1], gs)
        return merged_depth_attention(q, vs, g, 1e-6, o1[k], lse1[k], n_phase1)

    return fn


@pytest.mark.parametrize("n_phase1", [1, 2, 3, 5, 6], ids=lambda m: f"phase1_{m}of6")
def test_merged_any_prefix_matches_reference(n_phase1):
    # Full-AttnRes scheduling group: phase 1 over the sources before the group, then up to
    # several in-group sources merged one at a time (6 − n_phase1 of them here).
    query, sources, weight, grad_out = make(6, (2, 4, 16), seed=5)
    others = make(3, (16,), seed=6)
    queries = torch.stack([others[0], query, others[0] * 0.5])
    weights = torch.stack([others[2], weight, others[2]])
    got = run(phase2_fn(n_phase1, 1, queries, weights), query, sources, weight, grad_out)
    assert_all_close(got, run(impl_fn("naive"), query, sources, weight, grad_out), 1e-12)


def test_merged_fp32_group_matches_reference():
    query, sources, weight, grad_out = make(8, (2, 4, 16), torch.float32, seed=7)
    queries, weights = query.unsqueeze(0), weight.unsqueeze(0)
    got = run(phase2_fn(3, 0, queries, weights), query, sources, weight, grad_out)
    assert_all_close(got, run(impl_fn("naive"), query, sources, weight, grad_out), 1e-5)


def test_merged_gradcheck_group():
    query, sources, weight, _ = make(5, (2, 3), seed=8)
    fn = phase2_fn(2, 0, query.unsqueeze(0), weight.unsqueeze(0))
    inputs = [query.requires_grad_(), weight.requires_grad_()] + [v.requires_grad_() for v in sources]
    assert torch.autograd.gradcheck(lambda q, g, *vs: fn(q, list(vs), g), inputs)


def test_phase1_is_batched_single_reads_and_cache_is_exact():
    _, sources, _, _ = make(4, (3, 5, 16), seed=9)
    queries = torch.stack([make(1, (16,), seed=s)[0] for s in range(3)])
    weights = torch.stack([make(1, (16,), seed=s)[2] for s in range(3)])
    o1, lse1 = phase1(queries, sources, weights)
    assert o1.shape == (3, 3, 5, 16) and lse1.shape == (3, 3, 5)
    for k in range(3):
        assert rel(o1[k], naive_depth_attention(queries[k], sources, weights[k])) <= 1e-12
    r = [torch.rsqrt(v.square().mean(-1) + 1e-6) for v in sources]
    o1c, lse1c = phase1(queries, sources, weights, inv_rms_cache=[r[0], None, r[2], r[3]])
    assert torch.equal(o1c, o1) and torch.equal(lse1c, lse1)


# ---------------------------------------------------------------- docs/THEORY.md#invariants


@pytest.mark.parametrize("impl", ALL)
def test_single_source_is_returned_itself(impl):
    # I7: v_0 bitwise (the same object), and no gradient for query or gain.
    query, (v,), weight, _ = make(1, (2, 3, 16), torch.float32)
    query.requires_grad_()
    weight.requires_grad_()
    v.requires_grad_()
    h = depth_attention(query, [v], weight, impl=impl)
    assert h is v
    h.sum().backward()
    assert query.grad is None and weight.grad is None
    h, p = depth_attention(query, [v], weight, return_weights=True, impl=impl)
    assert h is v and p.shape == (1, 2, 3) and bool((p == 1).all())


def test_merged_single_source_is_returned_itself():
    query, (v,), weight, _ = make(1, (2, 16), torch.float32)
    o1, lse1 = phase1(query.unsqueeze(0), [v], weight.unsqueeze(0))
    assert merged_depth_attention(query, [v], weight, 1e-6, o1[0], lse1[0], 1) is v


@pytest.mark.parametrize("n", [2, 3, 5, 7, 9, 17], ids=lambda n: f"n{n}")
@pytest.mark.parametrize("impl", ALL)
def test_zero_query_gives_uniform_weights(impl, n):
    # I1: |n·p_i − 1| ≤ 4·2⁻²³ in fp32, and the output is the mean of the sources.
    _, sources, weight, _ = make(n, (2, 8, 16), torch.float32, seed=10)
    query = torch.zeros(16)
    h, p = depth_attention(query, sources, weight, return_weights=True, impl=impl)
    assert (n * p - 1).abs().max().item() <= 4 * 2**-23
    assert rel(h, torch.stack(sources).mean(0)) <= 1e-6


@pytest.mark.parametrize("impl", ALL)
def test_key_scale_invariance(impl):
    # I3 (eps = 0): c·v_j has the logit of v_j, so v_j and 10·v_j get equal weight, and
    # rescaling a source leaves every weight unchanged.
    query, sources, weight, _ = make(4, (3, 5, 16), seed=11)
    _, p = depth_attention(query, sources, weight, eps=0.0, return_weights=True, impl=impl)
    scaled = [sources[0], 10 * sources[1], sources[2], 0.1 * sources[3]]
    _, ps = depth_attention(query, scaled, weight, eps=0.0, return_weights=True, impl=impl)
    assert rel(ps, p) <= 1e-13
    _, pair = depth_attention(query, [sources[0], 10 * sources[0]], weight, eps=0.0, return_weights=True, impl=impl)
    assert rel(pair[0], pair[1]) <= 1e-13
    # With eps > 0 the invariance is only approximate, and the test above can tell.
    _, pe = depth_attention(query, [sources[0] * 1e-4, sources[1]], weight, eps=1e-6, return_weights=True, impl=impl)
    _, p0 = depth_attention(query, [sources[0] * 1e-4, sources[1]], weight, eps=0.0, return_weights=True, impl=impl)
    assert rel(pe, p0) > 1e-6


@pytest.mark.parametrize("impl", ALL)
def test_bf16_sources(impl):
    # bf16 in, bf16 out: fp32 arithmetic on the upcast sources, cast once at the end.
    query, sources, weight, grad_out = make(5, (2, 6, 16), torch.bfloat16, seed=12)
    upcast = [v.float() for v in sources]
    h = depth_attention(query, sources, weight, impl=impl)
    assert h.dtype == torch.bfloat16
    assert torch.equal(h, depth_attention(query, upcast, weight, impl=impl).to(torch.bfloat16))
    # Against the reference only the summation order differs: at most one bf16 rounding.
    assert rel(h, naive_depth_attention(query, upcast, weight)) <= 2**-8
    grads = run(impl_fn(impl), query, sources, weight, grad_out)
    assert [t.dtype for t in grads] == [torch.bfloat16, torch.float32, torch.float32] + [torch.bfloat16] * 5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("impl", ALL)
def test_return_weights(impl, dtype):
    query, sources, weight, _ = make(5, (3, 4, 16), dtype, seed=13)
    h, p = depth_attention(query, sources, weight, return_weights=True, impl=impl)
    assert p.shape == (5, 3, 4) and p.dtype == dtype and not p.requires_grad
    assert rel(p.sum(0), torch.ones(3, 4, dtype=dtype)) <= 4 * torch.finfo(dtype).eps
    weighted = (p.unsqueeze(-1) * torch.stack(sources)).sum(0)
    assert rel(h, weighted) <= 10 * torch.finfo(dtype).eps


@pytest.mark.parametrize("impl", ALL)
def test_autocast_does_not_lower_the_statistics(impl):
    # CPU autocast would run the logit matmuls in bf16; the read must stay in fp32 regardless.
    args = make(5, (2, 6, 16), torch.float32, seed=17)
    ref = run(impl_fn(impl), *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(impl_fn(impl), *args)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


# ---------------------------------------------------------------- memory: what backward keeps


def oversized_saves(fn, sources, per_token_per_source):
    """Saved-for-backward tensors larger than one scalar per token and source that are not
    one of `sources` (compared by storage)."""
    source_storages = {v.untyped_storage().data_ptr() for v in sources}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return [
        tuple(t.shape)
        for t in saved
        if t.numel() > per_token_per_source and t.untyped_storage().data_ptr() not in source_storages
    ]


@pytest.mark.parametrize("impl", ALL)
def test_recompute_saves_only_source_references(impl):
    n, shape = 5, (2, 8, 16)
    query, sources, weight, _ = make(n, shape, torch.float32, seed=14)
    query.requires_grad_()
    weight.requires_grad_()
    sources = [v.requires_grad_() for v in sources]
    limit = n * shape[0] * shape[1]  # one scalar per token and source; d = 16 < limit
    extra = oversized_saves(lambda: depth_attention(query, sources, weight, impl=impl), sources, limit)
    if impl == "naive":
        assert extra, "the stacked reference must show up as saved beyond the sources"
    else:
        assert extra == []


def test_merged_group_saves_only_source_references():
    n, shape = 6, (2, 8, 16)
    query, sources, weight, _ = make(n, shape, torch.float32, seed=15)
    sources = [v.requires_grad_() for v in sources]
    fn = phase2_fn(2, 0, query.unsqueeze(0), weight.unsqueeze(0))
    query.requires_grad_()
    weight.requires_grad_()
    assert oversized_saves(lambda: fn(query, sources, weight), sources, n * 16) == []


# ---------------------------------------------------------------- input validation


def test_impls_table():
    assert set(IMPLS) == {"naive", "recompute", "two_phase"}
    assert IMPLS["naive"] is naive_depth_attention
    assert IMPLS["recompute"] is recompute_depth_attention
    assert IMPLS["two_phase"] is two_phase_depth_attention


@pytest.mark.parametrize("impl", ALL)
def test_invalid_inputs(impl):
    q, v = torch.zeros(8), torch.zeros(2, 8)
    bad = {
        "empty": (q, [], None, "non-empty"),
        "shape": (q, [v, torch.zeros(3, 8)], None, "all must match"),
        "dtype": (q, [v, v.double()], None, "all must match"),
        "device": (q, [v, torch.zeros(2, 8, device="meta")], None, "all must match"),
        "width": (torch.zeros(4), [v, v], None, "query must be"),
        "query_rank": (torch.zeros(1, 8), [v, v], None, "query must be"),
        "gain": (q, [v, v], torch.ones(4), "key_norm_weight"),
    }
    for name, (query, sources, gain, msg) in bad.items():
        with pytest.raises(ValueError, match=msg):
            depth_attention(query, sources, gain, impl=impl)


def test_unknown_impl_lists_valid_ones():
    with pytest.raises(ValueError, match="recompute.*two_phase|two_phase.*recompute"):
        depth_attention(torch.zeros(8), [torch.zeros(2, 8)] * 2, impl="fused")


def test_two_phase_piece_validation():
    q, v = torch.zeros(8), torch.zeros(2, 8)
    with pytest.raises(ValueError, match="queries"):
        phase1(q, [v])
    with pytest.raises(ValueError, match="key_norm_weights"):
        phase1(q.unsqueeze(0), [v], torch.ones(2, 8))
    o1, lse1 = phase1(q.unsqueeze(0), [v, v])
    with pytest.raises(ValueError, match="n_phase1"):
        merged_depth_attention(q, [v, v], None, 1e-6, o1[0], lse1[0], 0)
    with pytest.raises(ValueError, match="o1"):
        merged_depth_attention(q, [v, v], None, 1e-6, o1, lse1, 2)


# ---------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", FAST)
def test_cuda_matches_cpu(impl):
    args = make(5, (2, 6, 16), seed=16)
    cuda = [t.cuda() if isinstance(t, torch.Tensor) else [v.cuda() for v in t] for t in args]
    got = [t.cpu() for t in run(impl_fn(impl), *cuda)]
    assert_all_close(got, run(impl_fn("naive"), *args), 1e-12)
