"""The inference read (ops/attnres/inference.py) against the plain reference `naive_depth_attention`.

fp64 at rel ≤ 1e-12: the two compute the same logits, softmax and weighted sum, in another
order (the key's norm through hypot instead of a mean of squares, the 1/sqrt(d) on the query),
so they differ by a few ulps times the O(1) condition of a softmax over logits of order 1. fp32 at
rel ≤ 1e-5: about 2^-24 per operation over a chain of d = 16 products and n ≤ 9 sources, with
room for FMA / AVX-512 reassociation.
"""

from __future__ import annotations

import pytest
import torch

from attnres.ops.attnres import (inference_depth_attention, naive_depth_attention, scaled_query,
                                 source_key, stacked_read)
from attnres.ops.attnres.naive import folded_query, inv_rms
from .test_attnres import make, rel  # the op tests' sources, query and gain (grad_out unused)

SHAPES = {"d": (16,), "BTd": (2, 5, 16)}


@pytest.mark.parametrize("gain", [True, False], ids=["gain", "no-gain"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("n", [2, 3, 5, 9], ids=lambda n: f"n{n}")
def test_matches_reference_fp64(n, shape, gain):
    query, sources, weight, _ = make(n, shape, gain=gain)
    got = inference_depth_attention(query, sources, weight, eps=1e-6)
    ref = naive_depth_attention(query, sources, weight, eps=1e-6)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert rel(got, ref) <= 1e-12


@pytest.mark.parametrize("n", [2, 5, 9], ids=lambda n: f"n{n}")
def test_matches_reference_fp32(n):
    query, sources, weight, _ = make(n, (2, 5, 16), torch.float32, seed=1)
    got = inference_depth_attention(query, sources, weight)
    assert got.dtype == torch.float32
    assert rel(got, naive_depth_attention(query, sources, weight)) <= 1e-5


def test_bf16_sources_are_read_in_fp32_and_cast_once():
    query, sources, weight, _ = make(5, (2, 5, 16), torch.bfloat16, seed=2)
    got = inference_depth_attention(query, sources, weight)
    ref = naive_depth_attention(query, sources, weight)
    assert got.dtype == torch.bfloat16
    assert rel(got, ref) <= 2 ** -7  # one bf16 rounding of the result at most apart


def test_large_eps_is_inside_the_square_root():
    """eps of the order of the mean square: a key formula that dropped or misplaced eps fails."""
    query, sources, weight, _ = make(4, (3, 16), seed=3)
    for eps in (1e-6, 0.5, 4.0):
        got = inference_depth_attention(query, sources, weight, eps=eps)
        assert rel(got, naive_depth_attention(query, sources, weight, eps=eps)) <= 1e-12


def test_source_key_is_the_rms_normalised_source_over_root_d():
    _, sources, _, _ = make(1, (2, 5, 16), seed=4)
    v = sources[0]
    for eps in (1e-6, 0.3):
        want = v * inv_rms(v, eps).unsqueeze(-1) / 16 ** 0.5
        assert rel(source_key(v, eps), want) <= 1e-14


def test_stacked_read_logits_are_the_reference_logits():
    """k_i · sqrt(d) q~ = r_i (q~ · v_i): checked through the weights of a two-source read, whose
    output is v_1 + σ(z_0 − z_1)(v_0 − v_1) for the reference logits z."""
    query, sources, weight, _ = make(2, (7, 16), seed=5)
    q = folded_query(query, weight, torch.float64)
    z = [inv_rms(v, 1e-6) * (v @ q) for v in sources]
    want = sources[1] + torch.sigmoid(z[0] - z[1]).unsqueeze(-1) * (sources[0] - sources[1])
    keys = [source_key(v, 1e-6) for v in sources]
    assert rel(stacked_read(scaled_query(q), keys, sources), want) <= 1e-13


def test_single_source_is_returned_itself():
    query, sources, weight, _ = make(1, (2, 5, 16))
    assert inference_depth_attention(query, sources, weight) is sources[0]
    assert stacked_read(query, [source_key(sources[0], 1e-6)], sources) is sources[0]


@pytest.mark.parametrize("n", [2, 3, 7])
def test_zero_query_gives_the_mean_of_the_sources(n):
    _, sources, weight, _ = make(n, (2, 5, 16), seed=6)
    got = inference_depth_attention(torch.zeros(16, dtype=torch.float64), sources, weight)
    assert rel(got, torch.stack(sources).mean(0)) <= 1e-15


def test_no_autograd_graph_is_built():
    query, sources, weight, _ = make(3, (4, 16))
    query.requires_grad_()
    assert not inference_depth_attention(query, sources, weight).requires_grad
