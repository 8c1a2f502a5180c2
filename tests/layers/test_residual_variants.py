"""The Table-4 ablation variants (docs/THEORY.md#ablation-variants) as residual options.

What holds at initialisation, and is checked here:
- every softmax variant reads the uniform mean of its sources (zero query / zero W_l / zero
  logits), so with every norm ε = 0 the step-0 logits equal the baseline's (I2);
- sigmoid reads ½·Σ sources = ½·h_l^baseline, which the PreNorm also undoes: the step-0 logits
  equal the baseline's too (with ε = 0);
- SWA reads the mean of [e, last W outputs], which no longer sums to h_l: it differs from the
  baseline once a read has more than W + 1 candidate sources;
- DenseFormer at identity init is the baseline bit for bit (any ε);
- mHC is not identity-initialised (the package's H_pre = σ(·) and H_post = 2σ(·) start away from
  1), so only shapes, gradients and I13 are checked.
"""

import pytest
import torch

import attnres.ops.attnres as op
from attnres import config, tags
from attnres.config import ConfigError, ResidualConfig
from attnres.layers.depth_variants import ReadOptions, VariantRead, num_sources, plain_depth_read
from attnres.layers.residual import (AttnResStream, DenseFormerStream, DepthRead, DepthRecord,
                                     Residual)
from attnres.models.dense import DenseLM, dense_config
from attnres.ops.attnres import naive_depth_attention
from attnres.train.build import build_model

# name -> DenseConfig overrides (tiny preset: d = 64, 4 layers = 8 sublayers)
VARIANTS = {
    "full": dict(residual="full"),
    "full-input-query": dict(residual="full", query="input_dependent"),
    "full-static-mixing": dict(residual="full", mixing="static"),
    "full-sigmoid": dict(residual="full", kernel="sigmoid"),
    "full-no-key-norm": dict(residual="full", key_norm="none"),
    "full-rms-no-gain": dict(residual="full", key_norm="rms"),
    "full-swa": dict(residual="full", window=2),
    "block-multihead": dict(residual="block", heads=16),
    "block-input-query": dict(residual="block", query="input_dependent"),
    "block-static-mixing": dict(residual="block", mixing="static"),
    "block-sigmoid": dict(residual="block", kernel="sigmoid"),
    "block-no-key-norm": dict(residual="block", key_norm="none"),
    "denseformer": dict(residual="denseformer"),
    "mhc": dict(residual="mhc"),
}
# variants whose step-0 logits equal the baseline's with every norm ε = 0 (I2)
EQUAL_AT_INIT = [n for n in VARIANTS if n not in ("full-swa", "mhc")]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(seed=0, residual="prenorm", **kw):
    """The tiny dense model; keyword arguments that name ResidualConfig fields go there."""
    torch.manual_seed(seed)
    fields = ResidualConfig.__dataclass_fields__
    res = ResidualConfig(residual, **{k: kw.pop(k) for k in list(kw) if k in fields})
    return DenseLM(dense_config("tiny", residual=res, **kw))


def is_residual_param(name):
    return ".res_" in name or name.startswith("final_res")


def residual_params(model):
    return {n: p for n, p in model.named_parameters() if is_residual_param(n)}


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if not is_residual_param(k)}


@torch.no_grad()
def perturb(model, scale=0.1):
    """Move every residual parameter off its init (own generator: the global RNG is untouched)."""
    g = torch.Generator().manual_seed(1)
    for p in residual_params(model).values():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# --- every variant through a tiny dense model ---------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_reaches_every_variant_parameter(name):
    kw = VARIANTS[name]
    model = build(**kw)
    perturb(model)
    idx = torch.randint(0, 256, (2, 12))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 12, 256) and torch.isfinite(loss)
    loss.backward()
    params = residual_params(model)
    assert params, name
    softmax_attnres = kw["residual"] in ("full", "block") and "kernel" not in kw
    for n, p in params.items():
        # AttnRes reads train at the read LR; DenseFormer / mHC mixing at the global LR
        group = tags.ATTNRES if kw["residual"] in ("full", "block") else tags.ADAMW_NO_DECAY
        assert p.dtype == torch.float32 and tags.get_group(p) == group, n
        if softmax_attnres and n.startswith("layers.0.res_mixer."):
            # sublayer 1 reads [e] alone: returned bitwise, so its parameters get no gradient (I7)
            assert p.grad is None or not p.grad.any(), n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", VARIANTS)
def test_backbone_initialisation_is_the_baselines(name):
    """I13: residual parameters draw no random numbers, so the backbone is bitwise the same."""
    base, model = backbone_state(build(residual="prenorm")), backbone_state(build(**VARIANTS[name]))
    assert base.keys() == model.keys()
    for k in base:
        assert torch.equal(base[k], model[k]), k


@pytest.mark.parametrize("name", EQUAL_AT_INIT)
def test_step0_logits_equal_the_baseline_at_the_default_eps(name):
    """I2 for the variants: uniform means (and sigmoid's ½·sum) are undone by every PreNorm,
    whose ε is scaled to its read (Residual.norm_eps)."""
    kw = {}
    base = build(residual="prenorm", **kw).double()
    model = build(**VARIANTS[name], **kw).double()
    idx = torch.randint(0, 256, (2, 16))
    assert rel(model(idx), base(idx)) < 1e-10


def test_swa_differs_from_the_baseline_at_init():
    kw = {}
    idx = torch.randint(0, 256, (2, 16))
    base = build(residual="prenorm", **kw).double()(idx)
    assert rel(build(**VARIANTS["full-swa"], **kw).double()(idx), base) > 1e-6
    # a window wider than the depth sees every source: the baseline again
    wide = build(residual="full", window=8, **kw).double()(idx)
    assert rel(wide, base) < 1e-10


def test_denseformer_at_identity_init_is_the_baseline_bitwise():
    idx = torch.randint(0, 256, (2, 16))
    base, model = build(residual="prenorm"), build(residual="denseformer")
    assert torch.equal(model(idx), base(idx))


def test_parameter_counts():
    d, L, Lb = 64, 8, 4
    count = lambda **kw: sum(p.numel() for p in residual_params(build(**kw)).values())  # noqa: E731
    assert count(residual="full") == 2 * d * (L + 1)                        # I12
    assert count(residual="block", heads=16) == 2 * d * (L + 1)     # multihead: unchanged
    assert count(residual="full", kernel="sigmoid") == 2 * d * (L + 1)
    assert count(residual="full", key_norm="rms") == d * (L + 1)    # no gain
    assert count(residual="block", key_norm="none") == d * (L + 1)
    assert count(residual="full", query="input_dependent") == (d * d + 2 * d) * (L + 1)
    assert count(residual="full", mixing="static") == sum(range(1, L + 1)) + L + 1
    assert count(residual="block", mixing="static") == 1 + 2 * 4 + 3 * 3 + 3  # docs/THEORY.md#worked-example, S = 4
    assert count(residual="full", mixing="static", window=2) == \
        sum(min(l, 3) for l in range(1, L + 1)) + 3
    assert count(residual="denseformer") == sum(j + 1 for j in range(1, Lb + 1))
    assert count(residual="prenorm") == 0


def test_static_mixing_sizes_follow_the_worked_example():
    """docs/THEORY.md#worked-example (L = 8, S = 4): 1, 2, 2, 2, 2, 3, 3, 3 sources and a final read
    over 3."""
    assert [num_sources(r, 8, 4) for r in range(9)] == [1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert [num_sources(r, 8, 1) for r in range(9)] == list(range(1, 10))
    assert [num_sources(r, 8, 1, window=2) for r in range(9)] == [1, 2, 3, 3, 3, 3, 3, 3, 3]
    model = build(residual="block", mixing="static")
    sizes = [r.logits.shape[0] for r in model.reads()]
    assert sizes == [1, 2, 2, 2, 2, 3, 3, 3, 3]


def test_default_options_keep_the_plain_read_and_the_recompute_op(monkeypatch):
    calls = []

    def counting(*args):
        calls.append(len(args[1]))
        return recompute(*args)

    recompute = op.IMPLS["recompute"]
    monkeypatch.setitem(op.IMPLS, "recompute", counting)
    idx = torch.randint(0, 256, (2, 8))
    for kw in (dict(residual="block"), dict(residual="full"), dict(residual="full", window=2),
               dict(residual="full", key_norm="rms")):
        model = build(**kw)
        if "key_norm" not in kw:
            assert all(type(r) is DepthRead for r in model.reads()), kw
        calls.clear()
        model(idx)
        assert len(calls) == model.cfg.n_sublayers + 1, kw
    calls.clear()
    build(residual="full", kernel="sigmoid")(idx)  # a variant the op does not cover
    assert calls == []


@pytest.mark.parametrize("name", ["full-input-query", "block-static-mixing", "denseformer", "mhc"])
def test_cached_generation_equals_full_recomputation(name):
    """Every variant mixes per token only, so the KV cache still gives the full pass. In fp64:
    the two paths sum in another order, and in fp32 the input-dependent query (a d×d map of the
    latest source) amplifies that rounding to ~1e-5 on some CPUs (AVX-512). mHC's package works
    in fp32 whatever the model dtype, so it is compared in fp32 at the end-to-end tolerance."""
    dtype, tol = (torch.float32, 1e-4) if name == "mhc" else (torch.float64, 1e-10)
    model = build(**VARIANTS[name]).eval().to(dtype)
    perturb(model, 0.3)
    idx = torch.randint(0, 256, (1, 20))
    cache = model.new_cache()
    with torch.no_grad():
        parts = [model(idx[:, :9], cache=cache), model(idx[:, 9:10], cache=cache),
                 model(idx[:, 10:], cache=cache)]
        assert rel(torch.cat(parts, dim=1), model(idx)) < tol


@pytest.mark.parametrize("name", ["block-multihead", "full-static-mixing", "full-sigmoid"])
def test_analysis_records_depth_weights(name):
    model = build(**VARIANTS[name])
    record = DepthRecord()
    model(torch.randint(0, 256, (2, 8)), record=record)
    L, S = model.cfg.n_sublayers, model.residual.block_size
    assert sorted(record.weights) == list(range(L + 1))
    for r in range(L + 1):  # mean weight per source at init: σ(0) for sigmoid, else uniform
        n = num_sources(r, L, S)
        want = 0.5 if model.cfg.residual.kernel == "sigmoid" else 1 / n
        torch.testing.assert_close(record.weights[r], torch.full((n,), want))


# --- the reads themselves --------------------------------------------------------------------

D = 8


def sources(n, shape=(3, 5), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, D, generator=g, dtype=dtype) for _ in range(n)]


def test_multihead_with_one_head_is_the_plain_read():
    srcs = sources(4)
    w, g = torch.randn(D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5
    want = naive_depth_attention(w, srcs, g, 1e-6)
    torch.testing.assert_close(plain_depth_read(w, srcs, g, 1e-6, heads=1), want, rtol=1e-12, atol=0)


def test_multihead_is_an_independent_read_per_channel_group():
    srcs, H = sources(3), 4
    w, g = torch.randn(D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5
    got, p = plain_depth_read(w, srcs, g, 1e-6, heads=H, return_weights=True)
    assert p.shape == (3, 3, 5, H)
    c = D // H
    for h in range(H):
        grp = slice(h * c, (h + 1) * c)  # the key RMS is taken over the group's channels only
        want = naive_depth_attention(w[grp], [v[..., grp] for v in srcs], g[grp], 1e-6)
        torch.testing.assert_close(got[..., grp], want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="divide"):
        plain_depth_read(w, srcs, g, heads=3)


def test_key_norm_none_uses_the_raw_dot_product():
    srcs = sources(3)
    w = torch.randn(D, dtype=torch.float64)
    p = torch.softmax(torch.stack([v @ w for v in srcs]), 0)
    want = sum(p_i.unsqueeze(-1) * v for p_i, v in zip(p, srcs))
    read = VariantRead(D, ReadOptions(key_norm="none")).double()
    assert read.key_norm is None and [n for n, _ in read.named_parameters()] == ["query"]
    with torch.no_grad():
        read.query.copy_(w)
    torch.testing.assert_close(read(srcs), want, rtol=1e-12, atol=1e-12)
    # I3 no longer holds: scaling a source changes its logit
    scaled = [srcs[0], 3 * srcs[1], srcs[2]]
    _, p_scaled = read(scaled, return_weights=True)
    assert not torch.allclose(p_scaled[0], p[0])


def test_input_dependent_query_projects_the_most_recent_source():
    srcs = sources(4)
    read = VariantRead(D, ReadOptions(query="input_dependent"), eps=1e-6).double()
    torch.testing.assert_close(read(srcs), sum(srcs) / 4, rtol=1e-12, atol=1e-12)  # W = 0
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        read.query_proj.copy_(torch.randn(D, D, generator=gen, dtype=torch.float64))
        read.query_norm.weight.mul_(torch.rand(D, generator=gen, dtype=torch.float64) + 0.5)
        read.key_norm.weight.mul_(torch.rand(D, generator=gen, dtype=torch.float64) + 0.5)
    x = srcs[-1]
    xn = x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt() * read.query_norm.weight
    q = xn @ read.query_proj.T                                     # [3, 5, D]: one query per token
    keys = [v / (v.square().mean(-1, keepdim=True) + 1e-6).sqrt() * read.key_norm.weight for v in srcs]
    p = torch.softmax(torch.stack([(k * q).sum(-1) for k in keys]), 0)
    want = sum(p_i.unsqueeze(-1) * v for p_i, v in zip(p, srcs))
    torch.testing.assert_close(read(srcs), want, rtol=1e-10, atol=1e-12)
    assert read(srcs[:1]) is srcs[0]  # a single source is still returned as is


def test_sigmoid_gates_are_unnormalised_and_apply_to_a_single_source():
    srcs = sources(3)
    read = VariantRead(D, ReadOptions(kernel="sigmoid")).double()
    torch.testing.assert_close(read(srcs), 0.5 * sum(srcs), rtol=1e-12, atol=1e-12)
    one = read(srcs[:1])
    assert one is not srcs[0]
    torch.testing.assert_close(one, 0.5 * srcs[0], rtol=0, atol=0)
    one.sum().backward()
    assert read.query.grad is not None and read.query.grad.abs().sum() > 0


def test_static_mixing_is_one_softmax_shared_by_all_tokens():
    srcs = sources(3)
    read = VariantRead(D, ReadOptions(mixing="static"), n_sources=3).double()
    assert [n for n, _ in read.named_parameters()] == ["logits"]
    torch.testing.assert_close(read(srcs), sum(srcs) / 3, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        read.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    a = torch.softmax(read.logits, 0)
    h, p = read(srcs, return_weights=True)
    torch.testing.assert_close(h, sum(a_i * v for a_i, v in zip(a, srcs)), rtol=1e-12, atol=1e-12)
    assert p.shape == (3, 3, 5) and torch.equal(p[:, 1, 2], a.detach())
    with pytest.raises(ValueError, match="owns 3 logits"):
        read(srcs[:2])


def test_swa_source_lists_are_the_embedding_and_the_last_w_outputs():
    W, L = 3, 8
    log = {}

    class Recording(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, srcs, return_weights=False):
            log[self.i] = list(srcs)
            return srcs[0]

    e = torch.randn(2, D)
    outs = [torch.randn(2, D) for _ in range(L)]
    stream = AttnResStream(e, [Recording(i) for i in range(L + 1)], 1, window=W)
    for sub in range(L):
        stream.read(sub)
        stream.write(sub, outs[sub])
    stream.final()
    for read in range(L + 1):  # read l = read + 1 sees {v_0} ∪ {v_j : max(1, l - W) <= j <= l - 1}
        want = [e] + outs[max(0, read - W):read]
        assert len(log[read]) == len(want) and all(a is b for a, b in zip(log[read], want)), read
    with pytest.raises(ValueError, match="Full"):
        Residual(ResidualConfig("block", block_size=2, window=2))


def test_denseformer_mixes_the_layer_outputs_at_every_layer_boundary():
    L = 6
    res = Residual(ResidualConfig("denseformer"), n_sublayers=L)
    mixes = [res.make_read(D, s) for s in range(L + 1)]
    # a mix before layers 2 and 3 (sublayers 2, 4) and the final one, over 2, 3 and 4 outputs
    assert [type(m).__name__ for m in mixes[1::2]] == ["NoneType"] * 3
    assert [m.weight.shape[0] for m in mixes[2::2]] == [2, 3, 4]
    assert mixes[0] is None and torch.equal(mixes[-1].weight, torch.tensor([0.0, 0, 0, 1]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in mixes[2::2]:
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
    e = torch.randn(2, D)
    outs = [torch.randn(2, D) for _ in range(L)]
    stream = DenseFormerStream(e, mixes)
    X, Y = [e], e
    for sub in range(L):
        torch.testing.assert_close(stream.read(sub), Y if sub % 2 == 0 else Y + outs[sub - 1])
        stream.write(sub, outs[sub])
        if sub % 2 == 1:  # X_j = Y_{j-1} + mixer out + FFN out, then Y_j = Σ a_{j,i} X_i
            X.append(Y + outs[sub - 1] + outs[sub])
            a = mixes[sub + 1].weight
            Y = sum(a_i * x for a_i, x in zip(a, X))
    torch.testing.assert_close(stream.final(), Y)


def test_mhc_keeps_four_streams_and_sums_them_at_the_end():
    res = Residual(ResidualConfig("mhc"), n_sublayers=2)
    reads = [res.make_read(D, s) for s in range(3)]
    assert reads[-1] is None and all(r.n_streams == 4 for r in reads[:2])
    e = torch.randn(2, 5, D)
    stream = res.stream(e, reads)
    assert stream.streams.shape == (8, 5, D)  # [(B·m), T, d]
    torch.testing.assert_close(stream.final(), 4 * e)
    h = stream.read(0)
    assert h.shape == e.shape
    stream.write(0, torch.zeros_like(h))


@pytest.mark.parametrize("kind,options", [
    ("full", dict(query="input_dependent")), ("block", dict(mixing="static")),
    ("block", dict(heads=4, key_norm="rms")), ("denseformer", {}), ("mhc", {})])
def test_read_modules_draw_no_random_numbers(kind, options):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    res = Residual(ResidualConfig(kind, **options), n_sublayers=8)
    reads = [res.make_read(16, s) for s in range(9)]
    assert torch.equal(torch.get_rng_state(), before)
    assert any(r is not None for r in reads)


# --- config -> model ----------------------------------------------------------------------

CONFIG_VARIANTS = {
    "input-query": ["residual.kind=full", "residual.query=input_dependent"],
    "static-mixing": ["residual.kind=block", "residual.mixing=static"],
    "sigmoid": ["residual.kind=block", "residual.kernel=sigmoid"],
    "no-key-norm": ["residual.kind=block", "residual.key_norm=none"],
    "rms": ["residual.kind=block", "residual.key_norm=rms"],
    "swa": ["residual.kind=full", "residual.window=8"],
    "multihead": ["residual.kind=block", "residual.heads=16"],
    "denseformer": ["residual.kind=denseformer"],
    "mhc": ["residual.kind=mhc"],
}


@pytest.mark.parametrize("name", CONFIG_VARIANTS)
def test_every_variant_builds_from_the_config(name):
    cfg = config.load(overrides=["model.preset=tiny", "model.n_layers=2", *CONFIG_VARIANTS[name]])
    model = build_model(cfg, vocab_size=64)
    # the model carries the config's residual section unchanged, and its reads follow it
    assert model.cfg.residual == cfg.residual
    assert model.residual.kind == cfg.residual.kind
    if cfg.residual.is_attnres:
        r, o = cfg.residual, model.residual.options
        assert (o.query, o.mixing, o.kernel, o.key_norm, o.window or 0, o.heads) == \
            (r.query, r.mixing, r.kernel, r.key_norm, r.window, r.heads)
    logits, loss = model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("overrides,message", [
    (["residual.kind=block", "residual.window=4"], "residual.window = 4 applies only to"),
    (["residual.window=-1"], "residual.window must be >= 0"),
    (["residual.kind=block", "residual.mixing=static", "residual.query=input_dependent"],
     "has no query"),
    (["residual.kind=block", "residual.mixing=static", "residual.heads=2"], "heads must be 1"),
    (["residual.kind=block", "residual.kernel=sigmoid", "residual.impl=two_phase"], "two_phase"),
    (["residual.kernel=relu"], "residual.kernel = 'relu' is not one of"),
    (["residual.heads=0"], "residual.heads must be >= 1"),
    (["residual.kind=hyper"], "residual.kind = 'hyper' is not one of"),
    (["residual.kind=block", "residual.block_size=2", "residual.num_blocks=4"], "give one of them"),
])
def test_bad_variant_configs_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        config.load(overrides=overrides)
    assert "\n" not in str(err.value)


def test_heads_must_divide_d_model_at_build():
    cfg = config.load(overrides=["model.preset=tiny", "residual.kind=block", "residual.heads=3"])
    with pytest.raises(ConfigError, match="heads = 3 does not divide d_model 64"):
        build_model(cfg, vocab_size=64)
