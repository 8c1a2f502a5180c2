"""The inference stream (`InferenceAttnResStream`): the same reads as the training-path stream
under `no_grad`, when it is taken and when not, and the same greedy tokens.

fp64 comparisons at rel ≤ 1e-12 per read and ≤ 1e-10 through a model (the two paths round
differently at every read: docs/THEORY.md#tolerances); token equality in fp32 on models with
random (non-uniform) depth queries.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnres import config
from attnres.config import ResidualConfig
from attnres.layers.residual import AttnResStream, DepthRecord, InferenceAttnResStream, Residual
from attnres.train.build import build_model

D, L = 16, 8


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def randomise_reads(reads, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in reads:
            r.query.copy_(torch.randn(r.query.shape, generator=gen) * 0.5)
            r.key_norm.weight.copy_(1 + 0.3 * torch.randn(r.key_norm.weight.shape, generator=gen))


def drive(residual, reads, e, outs, stream_fn):
    """Every read's output and the final read, through `stream_fn(e, reads)`."""
    stream = stream_fn(e, reads)
    got = []
    for sub, out in enumerate(outs):
        got.append(stream.read(sub))
        stream.write(sub, out)
    got.append(stream.final())
    return stream, got


def setup(kind, block_size=0, window=0, dtype=torch.float64, seed=0):
    residual = Residual(ResidualConfig(kind, block_size=block_size, window=window), L)
    reads = [residual.make_read(D, sub).to(dtype) for sub in range(L + 1)]
    randomise_reads(reads, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    e = torch.randn(2, 3, D, generator=gen, dtype=dtype)
    outs = [torch.randn(2, 3, D, generator=gen, dtype=dtype) * (1 + l % 3) for l in range(L)]
    return residual, reads, e, outs


CASES = {"full": ("full", 0, 0), "block-2": ("block", 2, 0), "block-3": ("block", 3, 0),
         "block-4": ("block", 4, 0), "block-9": ("block", 9, 0), "swa-3": ("full", 0, 3)}


@pytest.mark.parametrize("case", CASES)
def test_every_read_matches_the_reference_stream_fp64(case):
    residual, reads, e, outs = setup(*CASES[case])
    with torch.no_grad():
        stream, fast = drive(residual, reads, e, outs, residual.stream)
        assert type(stream) is InferenceAttnResStream
        residual.fast_inference = False
        ref_stream, ref = drive(residual, reads, e, outs, residual.stream)
        assert type(ref_stream) is AttnResStream
    assert len(fast) == len(ref) == L + 1
    for k, (a, b) in enumerate(zip(fast, ref)):
        assert a.dtype == b.dtype and rel(a, b) <= 1e-12, f"read {k}: rel {rel(a, b):.3g}"
    assert len(stream.completed) == len(ref_stream.completed)


def test_matches_the_naive_reference_with_autograd_too():
    """The fast stream against the plain `naive` impl with autograd on, not only against the
    recompute Function it replaces under no_grad."""
    residual, reads, e, outs = setup("block", 3)
    with torch.no_grad():
        _, fast = drive(residual, reads, e, outs, residual.stream)
    naive = Residual(ResidualConfig("block", block_size=3, impl="naive"), L)
    _, ref = drive(naive, reads, e, outs, naive.stream)
    for a, b in zip(fast, ref):
        assert rel(a, b.detach()) <= 1e-12


def test_when_the_inference_stream_is_taken():
    residual, reads, e, _ = setup("block", 4)
    with torch.no_grad():
        assert type(residual.stream(e, reads)) is InferenceAttnResStream
        assert type(residual.stream(e, reads, DepthRecord())) is AttnResStream  # analysis
        assert type(residual.stream(e.float(), [r.float() for r in reads])) is InferenceAttnResStream
    assert type(residual.stream(e, reads)) is AttnResStream  # autograd on
    with torch.inference_mode():
        assert type(residual.stream(e, reads)) is InferenceAttnResStream
    naive = Residual(ResidualConfig("block", block_size=4, impl="naive"), L)
    with torch.no_grad():
        assert type(naive.stream(e, reads)) is AttnResStream  # the reference stays the reference
    for variant in (dict(key_norm="none"), dict(kernel="sigmoid"), dict(heads=4),
                    dict(query="input_dependent"), dict(key_norm="rms")):
        res = Residual(ResidualConfig("full", **variant), L)
        var_reads = [res.make_read(D, sub).double() for sub in range(L + 1)]
        with torch.no_grad():
            assert type(res.stream(e, var_reads)) is AttnResStream, variant


def test_bf16_model_state_keeps_the_training_path():
    """With state_dtype = model and bf16 sources the partial sums round in bf16 on the training
    path; the inference stream keeps the compute dtype, so it is not taken."""
    residual = Residual(ResidualConfig("full", state_dtype="model"), L)
    reads = [residual.make_read(D, sub) for sub in range(L + 1)]
    with torch.no_grad():
        s = residual.stream(torch.randn(1, 1, D, dtype=torch.bfloat16), reads)
    assert type(s) is AttnResStream


def test_query_cache_follows_in_place_updates_and_replaced_parameters():
    residual, reads, e, outs = setup("full")

    def both():
        with torch.no_grad():
            residual.fast_inference = True
            fast = drive(residual, reads, e, outs, residual.stream)[1]
            residual.fast_inference = False
            ref = drive(residual, reads, e, outs, residual.stream)[1]
        residual.fast_inference = True
        return fast, ref

    before = both()[0]
    with torch.no_grad():
        reads[5].query.mul_(-2.0)               # an optimizer step: in place, version bumped
    fast, ref = both()
    assert rel(fast[5], before[5]) > 1e-3
    assert all(rel(a, b) <= 1e-12 for a, b in zip(fast, ref))
    reads[7].key_norm.weight = nn.Parameter(torch.rand(D, dtype=torch.float64) + 0.5)  # assign
    fast, ref = both()
    assert all(rel(a, b) <= 1e-12 for a, b in zip(fast, ref))
    reads[3] = residual.make_read(D, 3).double()  # another module in the list
    randomise_reads([reads[3]], seed=9)
    fast, ref = both()
    assert all(rel(a, b) <= 1e-12 for a, b in zip(fast, ref))


def test_sources_set_from_outside_get_their_keys():
    """A pipeline stage builds a stream and then sets `completed` and `partial` itself."""
    residual, reads, e, outs = setup("block", 2)
    blocks = [e, outs[0] + outs[1], outs[2] + outs[3]]
    with torch.no_grad():
        ref = reads[5](blocks + [outs[4]])
        stream = residual.stream(e, reads)
        stream.completed, stream.partial = list(blocks), outs[4]
        assert rel(stream.read(5), ref) <= 1e-12


def test_autocast_keeps_the_reads_in_fp32():
    residual, reads, e, outs = setup("block", 4, dtype=torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stream, fast = drive(residual, reads, e, outs, residual.stream)
        assert type(stream) is InferenceAttnResStream
    with torch.no_grad():
        residual.fast_inference = False
        ref = drive(residual, reads, e, outs, residual.stream)[1]
    for a, b in zip(fast, ref):
        assert a.dtype == torch.float32 and rel(a, b) <= 1e-5


def model(backbone, kind, S=0, seed=0):
    overrides = [f"model.backbone={backbone}", f"residual.kind={kind}", "model.preset=tiny"]
    if kind == "block":
        overrides.append(f"residual.block_size={S}")
    if backbone == "kimi-linear":
        overrides.append("model.first_k_dense=4")  # dense FFNs: no routing near-ties
    m = build_model(config.load(overrides=overrides), vocab_size=256).eval()
    randomise_reads(m.reads(), seed)
    return m


@pytest.mark.parametrize("backbone", ["dense", "kimi-linear"])
@pytest.mark.parametrize("kind,S", [("full", 0), ("block", 2), ("block", 4)])
def test_cached_decoding_logits_match_the_reference_fp64(backbone, kind, S):
    m = model(backbone, kind, S).double()
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    logits = {}
    for fast in (True, False):
        m.residual.fast_inference = fast
        cache = m.new_cache()
        with torch.no_grad():
            steps = [m(idx[:, :8], cache=cache)] + [m(idx[:, t:t + 1], cache=cache)
                                                     for t in range(8, 12)]
        logits[fast] = torch.cat(steps, 1)
    assert rel(logits[True], logits[False]) <= 1e-10


@pytest.mark.parametrize("kind,S", [("full", 0), ("block", 4)])
def test_greedy_generate_gives_the_same_tokens(kind, S):
    m = model("dense", kind, S, seed=3)
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(2))
    m.residual.fast_inference = False
    ref = m.generate(prompt, 40, temperature=0)
    m.residual.fast_inference = True
    got = m.generate(prompt, 40, temperature=0)
    assert torch.equal(got, ref)
    assert len(set(got[0, 6:].tolist())) > 3  # not a degenerate repetition of one token
