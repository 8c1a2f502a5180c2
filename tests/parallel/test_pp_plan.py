"""Pipeline plan of Block AttnRes (docs/THEORY.md#cross-stage-caching): Fig. 3, Eq. 7/8 and its invariants."""

import dataclasses
import itertools
import random

import pytest

from attnres import units
from attnres.parallel import aligned_counts, chunk_bounds, count_block_vectors, pp_plan, simulate

# Fig. 3 (P = 4, V = 2): a block closes at the end of chunks 2, 4, 6, 8 (N_p = 1/2).
FIG3 = [  # (receiver rank, vstage), naive, cached
    ((1, 0), (0,), (0,)),
    ((2, 0), (0, 1), (0, 1)),
    ((3, 0), (0, 1), (0, 1)),
    ((0, 1), (0, 1, 2), (1, 2)),
    ((1, 1), (0, 1, 2), (1, 2)),
    ((2, 1), (0, 1, 2, 3), (2, 3)),
    ((3, 1), (0, 1, 2, 3), (2, 3)),
]


@pytest.mark.parametrize("per_chunk", [1, 2, 3], ids=lambda n: f"{n}-sublayers-per-chunk")
def test_fig3_payloads_and_totals(per_chunk):
    L = 8 * per_chunk
    plan = pp_plan(4, 2, units.block_closes(L, 2 * per_chunk), L)
    assert [c.rank for c in plan.chunks] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [c.vstage for c in plan.chunks] == [0, 0, 0, 0, 1, 1, 1, 1]
    got = [(t.receiver, t.naive, t.cached) for t in plan.transitions]
    assert got == FIG3
    assert (plan.naive_total, plan.cached_total) == (19, 13)
    assert simulate(plan).total == 13 and simulate(plan, cache=False).total == 19
    assert plan.table().splitlines()[-1].split() == ["total", "19", "13"]
    assert "+[b2,b3]" in plan.table().splitlines()[-2]


def test_fig3_headers_are_one_id_range_after_what_is_held():
    plan = pp_plan(4, 2, [2, 4, 6, 8], 8)
    assert [t.header() for t in plan.transitions] == [
        (0, 1, True), (0, 2, True), (0, 2, True), (1, 2, True), (1, 2, True), (2, 2, True),
        (2, 2, True)]
    assert all(t.header(cache=False)[:2] == (0, len(t.naive)) for t in plan.transitions)


def test_fig3_with_own_block_retention():
    """Ranks 1 and 3 closed b_1 and b_2 in their first chunks: they keep them, so 5→6 and 7→8
    carry one block fewer each (11 instead of 13)."""
    plan = pp_plan(4, 2, [2, 4, 6, 8], 8, cache_own_blocks=True)
    assert [t.cached for t in plan.transitions][3:] == [(1, 2), (2,), (2, 3), (3,)]
    assert plan.cached_total == simulate(plan).total == 11


def aligned(P, V, n_per_chunk, S):
    """Blocks of S sublayers, n_per_chunk of them per chunk, aligned to the chunk ends."""
    L = P * V * n_per_chunk * S
    return units.block_closes(L, S), L


def formula(P, V, n):
    C = P * V
    return (C - 1) + n * C * (C - 1) // 2, (P - 1) + n * (P * (P - 1) // 2 + (V - 1) * P ** 2)


@pytest.mark.parametrize("P, V, expected", [(4, 2, (35, 25)), (4, 3, (77, 41))])
def test_spec_examples_with_one_block_per_chunk(P, V, expected):
    closes, L = aligned(P, V, 1, 2)
    plan = pp_plan(P, V, closes, L)
    assert (plan.naive_total, plan.cached_total) == expected == aligned_counts(P, V, 1)


@pytest.mark.parametrize("P, V, n, S", list(itertools.product([1, 2, 3, 4, 5], [1, 2, 3, 4],
                                                                [1, 2, 3], [1, 3])))
def test_aligned_counts_match_eq7_eq8(P, V, n, S):
    closes, L = aligned(P, V, n, S)
    plan = pp_plan(P, V, closes, L)
    naive, cached = formula(P, V, n)
    assert (plan.naive_total, plan.cached_total) == (naive, cached) == aligned_counts(P, V, n)
    assert count_block_vectors(P, V, closes, L) == cached
    assert count_block_vectors(P, V, closes, L, cache=False) == naive
    # the peak per transition drops from O(C) to O(P)
    first_stage = [1 + c * n for c in range(1, P)]     # transitions into v0: nothing held yet
    later = [P * n] * (P * (V - 1))                     # the P chunks since the last visit
    assert [len(t.cached) for t in plan.transitions] == first_stage + later
    assert plan.peak == max(first_stage + later, default=0)
    assert pp_plan(P, V, closes, L, cache=False).peak == (1 + (P * V - 1) * n if P * V > 1 else 0)


def random_closes(rng, L):
    k = rng.randint(0, L - 1)
    return sorted(rng.sample(range(1, L), k)) + [L]


@pytest.mark.parametrize("seed", range(40))
def test_unaligned_blocks_keep_the_invariants(seed):
    rng = random.Random(seed)
    P, V = rng.randint(1, 4), rng.randint(1, 4)
    L = rng.randint(P * V, 3 * P * V + 5)
    closes = random_closes(rng, L)
    plan = pp_plan(P, V, closes, L)
    own = pp_plan(P, V, closes, L, cache_own_blocks=True)
    for p in (plan, own):
        for mode in (True, False):
            simulate(p, cache=mode)      # receivers hold exactly what their chunk reads
    assert own.cached_total <= plan.cached_total <= plan.naive_total
    for t in plan.transitions:
        assert set(t.held) | set(t.cached) == set(t.dst.inputs)
        assert not set(t.held) & set(t.cached)
        assert t.dst.inputs == tuple(range(1 + sum(c < t.dst.sublayers.start for c in closes)))
        first, count, partial = t.header()
        assert t.cached == tuple(range(first, first + count)) and partial
    assert [s for c in plan.chunks for s in c.sublayers] == list(range(1, L + 1))
    assert sorted(b for c in plan.chunks for b in c.closes) == list(range(1, len(closes) + 1))


def test_the_first_chunks_take_the_remainder():
    assert [len(r) for r in chunk_bounds(11, 4)] == [3, 3, 3, 2]
    assert [len(r) for r in chunk_bounds(8, 8)] == [1] * 8
    plan = pp_plan(2, 2, [3, 7], 7, chunk_sizes=[1, 1, 1, 4])
    assert [c.sublayers for c in plan.chunks] == [range(1, 2), range(2, 3), range(3, 4),
                                                 range(4, 8)]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="cannot fill"):
        pp_plan(4, 2, [4, 7], 7)
    with pytest.raises(ValueError, match="must increase"):
        pp_plan(2, 1, [2, 2, 4], 4)
    with pytest.raises(ValueError, match="end at the last sublayer"):
        pp_plan(2, 1, [2], 4)
    with pytest.raises(ValueError, match="P must be"):
        pp_plan(0, 1, [4], 4)
    with pytest.raises(ValueError, match="chunk_sizes"):
        pp_plan(2, 1, [4], 4, chunk_sizes=[1, 2])


def test_simulate_rejects_a_wrong_plan():
    plan = pp_plan(4, 2, [2, 4, 6, 8], 8)
    t = plan.transitions[4]                                        # 5→6 sends +[b1, b2]
    for cached, match in [((2,), "chunk reads"), ((0, 1, 2), "resends held"),
                          ((1, 3), "sender lacks")]:
        bad = dataclasses.replace(plan, transitions=plan.transitions[:4]
                                  + (dataclasses.replace(t, cached=cached),)
                                  + plan.transitions[5:])
        with pytest.raises(AssertionError, match=match):
            simulate(bad)
