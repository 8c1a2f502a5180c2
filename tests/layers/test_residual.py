"""Residual strategies: the bookkeeping of docs/THEORY.md#block-attnres to
docs/THEORY.md#endpoints and its invariants."""

import pytest
import torch
from torch import nn

from attnres import units
from attnres.config import ResidualConfig
from attnres.layers.residual import AttnResStream, DepthRead, PreNormStream, Residual

D = 4


class RecordingRead(nn.Module):
    """Stands in for a depth read: remembers the source list it was given."""

    def __init__(self, log, index):
        super().__init__()
        self.log, self.index = log, index

    def forward(self, sources, return_weights=False):
        self.log.append((self.index, list(sources)))
        return sources[0]


def drive(block_size, n_sublayers, stream_cls=AttnResStream):
    """Run the bookkeeping with known outputs f_l; return (embedding, outputs, reads log)."""
    torch.manual_seed(0)
    e = torch.randn(2, D)
    outs = [torch.randn(2, D) for _ in range(n_sublayers)]
    log = []
    reads = [RecordingRead(log, r) for r in range(n_sublayers + 1)]
    stream = AttnResStream(e, reads, block_size)
    for sub in range(n_sublayers):
        stream.read(sub)
        stream.write(sub, outs[sub])
    stream.final()
    return e, outs, dict(log)


def expected_sources(e, outs, block_size, read):
    """docs/THEORY.md#block-attnres (Eq. 6) written directly from the definition (1-based l = read + 1)."""
    L = len(outs)
    f = lambda l: outs[l - 1]  # noqa: E731
    if read == L:  # final read: all completed blocks
        closes = units.block_closes(L, block_size)
        starts = [1] + [c + 1 for c in closes[:-1]]
        return [e] + [sum(f(j) for j in range(a, c + 1)) for a, c in zip(starts, closes)]
    l = read + 1
    n = (l - 1) // block_size + 1
    i = l - (n - 1) * block_size
    blocks = [sum(f(j) for j in range((m - 1) * block_size + 1, m * block_size + 1)) for m in range(1, n)]
    srcs = [e] + blocks
    if i >= 2:
        srcs.append(sum(f(j) for j in range((n - 1) * block_size + 1, l)))
    return srcs


@pytest.mark.parametrize("S", [1, 2, 3, 4, 8, 16])
def test_source_lists_match_the_definition(S):
    L = 8
    e, outs, log = drive(S, L)
    for read in range(L + 1):
        got, want = log[read], expected_sources(e, outs, S, read)
        assert len(got) == len(want), (S, read)
        assert got[0] is e  # the embedding is always source 0, never copied
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_worked_example_of_spec_section_5():
    """4 layers = 8 sublayers, S = 4: the table of docs/THEORY.md#worked-example, by identity where
    tensors are shared."""
    e, f, log = drive(4, 8)
    f = [None] + f  # 1-based
    b1 = f[1] + f[2] + f[3] + f[4]
    rows = {
        1: [e], 2: [e, f[1]], 3: [e, f[1] + f[2]], 4: [e, f[1] + f[2] + f[3]],
        5: [e, b1], 6: [e, b1, f[5]], 7: [e, b1, f[5] + f[6]], 8: [e, b1, f[5] + f[6] + f[7]],
    }
    for l, want in rows.items():
        got = log[l - 1]
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert log[1][1] is f[1]            # h_2 reads the raw f_1 as the partial
    assert log[5][1] is log[4][1]       # b_1 is one tensor, shared by every later read
    assert log[8][1] is log[4][1]
    torch.testing.assert_close(log[8][2], f[5] + f[6] + f[7] + f[8])
    assert len(log[8]) == units.num_final_sources(8, 4)


def test_block_with_s1_gives_the_same_sources_as_full():
    e, outs, full_log = drive(1, 8)
    for read, srcs in full_log.items():
        want = [e] + outs[:read]
        assert len(srcs) == len(want)
        assert all(a is b for a, b in zip(srcs, want))  # Full keeps the raw outputs v_i


def test_n_equals_one_endpoint():
    e, outs, log = drive(8, 8)  # S >= L: N = 1
    assert log[0] == [e] or (len(log[0]) == 1 and log[0][0] is e)
    for read in range(1, 8):
        assert len(log[read]) == 2
    assert len(log[8]) == 2
    torch.testing.assert_close(log[8][1], sum(outs))


@pytest.mark.parametrize("S", [1, 2, 3, 4, 8])
def test_sources_of_every_read_sum_to_the_baseline_stream(S):
    """docs/THEORY.md#the-sources-sum-to-the-baseline-stream: Σ sources = e + Σ_{j<l} f_j = h_l of
    the PreNorm residual."""
    e, outs, log = drive(S, 8)
    base = PreNormStream(e)
    for read in range(8):
        h = base.read(read)
        torch.testing.assert_close(sum(log[read]), h, rtol=0, atol=1e-5)
        base.write(read, outs[read])
    torch.testing.assert_close(sum(log[8]), base.final(), rtol=0, atol=1e-5)


def test_zero_query_reads_return_the_mean_of_the_sources():
    torch.manual_seed(1)
    read = DepthRead(D)
    srcs = [torch.randn(3, D) for _ in range(4)]
    torch.testing.assert_close(read(srcs), sum(srcs) / 4, rtol=1e-6, atol=1e-6)


def test_read_parameters_are_fp32_zero_and_one_and_draw_no_random_numbers():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    read = DepthRead(16)
    assert torch.equal(torch.get_rng_state(), before)
    assert read.query.dtype == torch.float32 and not read.query.any()
    assert torch.equal(read.key_norm.weight, torch.ones(16))


def test_prenorm_has_no_reads_and_rejects_unknown_kinds():
    assert Residual(ResidualConfig("prenorm")).make_read(8) is None
    with pytest.raises(ValueError, match="residual kind"):
        Residual(ResidualConfig("dense"))


def test_stream_sources_are_held_in_the_state_dtype():
    res = Residual(ResidualConfig("block", block_size=2))
    reads = [res.make_read(D) for _ in range(3)]
    stream = res.stream(torch.randn(1, D, dtype=torch.bfloat16), reads)
    assert stream.sources()[0].dtype == torch.float32
    stream.read(0)
    stream.write(0, torch.randn(1, D, dtype=torch.bfloat16))
    assert all(s.dtype == torch.float32 for s in stream.sources())
