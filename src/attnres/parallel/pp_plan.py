"""The static plan of Block AttnRes traffic under interleaved pipeline parallelism
(docs/THEORY.md#cross-stage-caching, paper §4.1, Fig. 3, Eq. 7/8). Pure Python: no torch, no
communication.

Setup. P ranks, V virtual stages per rank, C = P·V chunks of contiguous sublayers. Chunk c
(1-based) runs on rank (c−1) mod P in virtual stage ⌈c/P⌉ − 1. Chunk sizes are equal; when C
does not divide L, the first L mod C chunks get one sublayer more (as numpy.array_split).

What a chunk reads. Every sublayer of chunk c reads the completed blocks b_0 (the embedding),
b_1, … that closed before the chunk's first sublayer, plus the running partial sum; blocks closed
inside the chunk are produced there. So chunk c's *inputs* are the block ids {0, …, k} closed at
or before its start, and the transition c → c+1 must put dst.inputs in the receiver's hands.
The partial sum (one d-vector per token, like a plain pipeline's hidden state) always travels
and is not counted.

Naive (Eq. 7): the payload of c → c+1 is all of dst.inputs.
Cached (paper rule, Eq. 8): a rank keeps every completed block that was part of the input of one
of its earlier chunks (rank 0 also holds b_0, which it computes), and the payload is only what
it does not hold yet. With `cache_own_blocks` a rank also keeps the blocks its earlier chunks
closed (off by default, so that Fig. 3 and Eq. 8 are reproduced). The held set and the inputs
are both prefixes {0, …, k}, so every payload is one contiguous block-id range: a header
(first_block_id, count, has_partial) describes it.

With integer N_p blocks per chunk, aligned to chunk ends, the counts (b_0 included) are
    naive  = (C−1) + N_p·C(C−1)/2
    cached = (P−1) + N_p·[P(P−1)/2 + (V−1)·P²]
(`aligned_counts`); e.g. P=4, V=2, N_p=1: 35 vs 25. `simulate` runs a plan with explicit per-rank
caches and checks that every receiver ends up with exactly the blocks its chunk reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """Chunk `index` (1-based) on `rank`, virtual stage `vstage`, running `sublayers` (1-based)."""

    index: int
    rank: int
    vstage: int
    sublayers: range
    inputs: tuple[int, ...]    # block ids completed before its first sublayer (b_0 included)
    closes: tuple[int, ...]    # block ids it completes


@dataclass(frozen=True)
class Transition:
    """Forward message src → dst (dst.index = src.index + 1); payloads are block ids."""

    src: Chunk
    dst: Chunk
    naive: tuple[int, ...]     # every block dst reads
    held: tuple[int, ...]      # what the receiving rank already holds before it (cached mode)
    cached: tuple[int, ...]    # naive minus held: the increment

    @property
    def receiver(self) -> tuple[int, int]:
        """(rank, virtual stage) of the receiving chunk."""
        return self.dst.rank, self.dst.vstage

    def header(self, cache: bool = True) -> tuple[int, int, bool]:
        """(first_block_id, count, has_partial) of the payload; first = the first id not held."""
        sent = self.cached if cache else self.naive
        first = len(self.held) if cache else 0
        return first, len(sent), True


@dataclass(frozen=True)
class PPPlan:
    P: int
    V: int
    n_sublayers: int
    block_closes: tuple[int, ...]
    cache: bool
    cache_own_blocks: bool
    chunks: tuple[Chunk, ...]
    transitions: tuple[Transition, ...]

    @property
    def n_chunks(self) -> int:
        return self.P * self.V

    def payloads(self, cache: bool | None = None) -> list[tuple[int, ...]]:
        """Block ids sent by each transition (the plan's mode unless `cache` is given)."""
        cache = self.cache if cache is None else cache
        return [t.cached if cache else t.naive for t in self.transitions]

    @property
    def naive_total(self) -> int:
        """Block-vectors per token sent forward without caching (Eq. 7, counting b_0)."""
        return sum(len(p) for p in self.payloads(cache=False))

    @property
    def cached_total(self) -> int:
        """Block-vectors per token sent forward with cross-stage caching (Eq. 8, counting b_0)."""
        return sum(len(p) for p in self.payloads(cache=True))

    @property
    def total(self) -> int:
        return self.cached_total if self.cache else self.naive_total

    @property
    def peak(self) -> int:
        """The largest payload of one transition, in the plan's mode."""
        return max((len(p) for p in self.payloads()), default=0)

    def table(self) -> str:
        """The table of docs/THEORY.md#cross-stage-caching: transition, receiver, naive and cached
        payloads."""
        def ids(blocks):
            return "[" + ",".join(f"b{b}" for b in blocks) + "]"
        rows = [f"{'transition':<11}{'receiver':<10}{'naive':<24}cached"]
        for t in self.transitions:
            inc = ("+" if t.dst.vstage > 0 else "") + ids(t.cached)
            rows.append(f"{t.src.index}→{t.dst.index:<9}r{t.dst.rank}, v{t.dst.vstage:<5}"
                        f"{ids(t.naive):<24}{inc}")
        rows.append(f"{'total':<21}{self.naive_total:<24}{self.cached_total}")
        return "\n".join(rows)


def chunk_bounds(n_sublayers: int, n_chunks: int) -> list[range]:
    """Contiguous 1-based sublayer ranges; the first L mod C chunks are one sublayer longer."""
    if n_sublayers < n_chunks:
        raise ValueError(f"pp: {n_sublayers} sublayers cannot fill {n_chunks} chunks "
                         f"(each chunk needs at least one)")
    base, extra = divmod(n_sublayers, n_chunks)
    out, start = [], 1
    for c in range(n_chunks):
        size = base + (c < extra)
        out.append(range(start, start + size))
        start += size
    return out


def pp_plan(P: int, V: int, block_closes: Sequence[int], n_sublayers: int | None = None,
            cache: bool = True, cache_own_blocks: bool = False,
            chunk_sizes: Sequence[int] | None = None) -> PPPlan:
    """The static forward-communication plan of Block AttnRes under an interleaved pipeline.

    Args:
        P: ranks (physical stages). V: virtual stages per rank; C = P·V chunks.
        block_closes: 1-based sublayer indices after which a block closes, increasing, the last
            = n_sublayers (`attnres.units.block_closes(L, S)`); block n closes at
            block_closes[n−1].
        n_sublayers: L (default: block_closes[-1]).
        cache: which payloads `PPPlan.payloads()` / `total` report (both are always computed).
        cache_own_blocks: ranks also keep the blocks their own earlier chunks closed.
        chunk_sizes: C explicit sizes summing to L, instead of the equal split.

    Returns:
        PPPlan with C chunks and C−1 transitions.
    """
    for name, v in (("P", P), ("V", V)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"pp: {name} must be an integer >= 1, got {v!r}")
    closes = tuple(block_closes)
    L = closes[-1] if n_sublayers is None and closes else n_sublayers
    if not closes or any(b <= a for a, b in zip(closes, closes[1:])) or closes[0] < 1 \
            or closes[-1] != L:
        raise ValueError(f"pp: block_closes {list(closes)} must increase strictly from >= 1 "
                         f"and end at the last sublayer {L}")
    C = P * V
    if chunk_sizes is None:
        bounds = chunk_bounds(L, C)
    else:
        if len(chunk_sizes) != C or any(s < 1 for s in chunk_sizes) or sum(chunk_sizes) != L:
            raise ValueError(f"pp: chunk_sizes {list(chunk_sizes)} must be {C} sizes >= 1 "
                             f"summing to {L}")
        starts = [1 + sum(chunk_sizes[:c]) for c in range(C)]
        bounds = [range(s, s + n) for s, n in zip(starts, chunk_sizes)]

    def closed_by(sub: int) -> int:          # number of blocks closed after sublayers 1..sub
        return bisect.bisect_right(closes, sub)

    chunks = []
    for c, subs in enumerate(bounds, start=1):
        before, after = closed_by(subs.start - 1), closed_by(subs.stop - 1)
        chunks.append(Chunk(index=c, rank=(c - 1) % P, vstage=(c - 1) // P, sublayers=subs,
                            inputs=tuple(range(before + 1)),
                            closes=tuple(range(before + 1, after + 1))))

    held: dict[int, set[int]] = {r: set() for r in range(P)}
    held[0].add(0)                           # rank 0 computes b_0 itself
    held[0].update(chunks[0].inputs)
    if cache_own_blocks:
        held[0].update(chunks[0].closes)
    transitions = []
    for src, dst in zip(chunks, chunks[1:]):
        have = held[dst.rank]
        transitions.append(Transition(src=src, dst=dst, naive=dst.inputs,
                                      held=tuple(sorted(have)),
                                      cached=tuple(b for b in dst.inputs if b not in have)))
        have.update(dst.inputs)              # the chunk's input is now held
        if cache_own_blocks:
            have.update(dst.closes)
    return PPPlan(P=P, V=V, n_sublayers=L, block_closes=closes, cache=cache,
                  cache_own_blocks=cache_own_blocks, chunks=tuple(chunks),
                  transitions=tuple(transitions))


@dataclass(frozen=True)
class SimResult:
    sent: tuple[int, ...]              # block-vectors per token of each transition
    total: int
    peak: int
    held: dict[int, tuple[int, ...]]   # per rank at the end: the blocks kept per micro-batch


def simulate(plan: PPPlan, cache: bool | None = None) -> SimResult:
    """Run `plan` with explicit per-rank block stores and count transmitted block-vectors.

    Independently of the plan's arithmetic it replays the bookkeeping of docs/THEORY.md#bookkeeping
    (sublayer by sublayer) and checks, for every transition, that the sender holds each block it
    sends, that nothing sent is already held by the receiver (cached mode), that the payload is one
    contiguous id range, and that the receiver ends up with exactly the blocks its chunk reads.

    Raises:
        AssertionError: naming the transition, if a check fails.
    """
    cache = plan.cache if cache is None else cache
    payloads = plan.payloads(cache)
    store: dict[int, set[int]] = {r: set() for r in range(plan.P)}   # kept across chunks
    completed = [0]                       # block ids completed so far (b_0 = the embedding)
    closes = set(plan.block_closes)
    sent, local = [], {0}                 # `local`: what the running chunk has in hand
    for i, chunk in enumerate(plan.chunks):
        if i == 0:
            local = {0}
        else:
            payload = payloads[i - 1]
            where = f"transition {i}→{i + 1}"
            assert set(payload) <= local, f"{where}: sender lacks {set(payload) - local}"
            assert not payload or list(payload) == list(range(payload[0], payload[-1] + 1)), \
                f"{where}: payload {payload} is not one id range"
            have = store[chunk.rank] if cache else set()
            assert not set(payload) & have, f"{where}: resends held {set(payload) & have}"
            local = have | set(payload)
            assert local == set(completed), \
                f"{where}: receiver has {sorted(local)}, chunk reads {completed}"
            sent.append(len(payload))
        store[chunk.rank] |= local        # the input of this chunk is kept
        for sub in chunk.sublayers:       # run the chunk: blocks close as in docs/THEORY.md#bookkeeping
            if sub in closes:
                completed.append(len(completed))
                local.add(completed[-1])
                if plan.cache_own_blocks:
                    store[chunk.rank].add(completed[-1])
    assert len(completed) == len(plan.block_closes) + 1
    return SimResult(sent=tuple(sent), total=sum(sent), peak=max(sent, default=0),
                     held={r: tuple(sorted(s)) for r, s in store.items()})


def count_block_vectors(P: int, V: int, block_closes: Sequence[int],
                        n_sublayers: int | None = None, cache: bool = True,
                        cache_own_blocks: bool = False) -> int:
    """Block-vectors per token sent forward over one pass (b_0 counted, partials not)."""
    plan = pp_plan(P, V, block_closes, n_sublayers, cache=cache,
                   cache_own_blocks=cache_own_blocks)
    return simulate(plan).total


def aligned_counts(P: int, V: int, n_per_chunk: int) -> tuple[int, int]:
    """(naive, cached) exact counts for N_p = n_per_chunk blocks per chunk, aligned
    (docs/THEORY.md#cross-stage-caching)."""
    C, n = P * V, n_per_chunk
    return (C - 1) + n * C * (C - 1) // 2, (P - 1) + n * (P * (P - 1) // 2 + (V - 1) * P * P)
