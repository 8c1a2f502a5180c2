"""Residual strategies: how each sublayer's input and the final hidden state are formed.

A backbone talks to its residual mechanism through one small interface, so it never branches on
the residual kind:

    residual = Residual(kind, ...)            # from the config; holds no parameters
    read = residual.make_read(d)              # a module per read (None for PreNorm)
    stream = residual.stream(embedding, reads)
    for sub, f in enumerate(sublayers):       # sub = l - 1, 0-based
        h = stream.read(sub)                  # the sublayer input h_l
        stream.write(sub, f(h))               # its output v_l = f_l(h_l)
    h_final = stream.final()                  # before the final norm

`prenorm` is the standard residual h_{l+1} = h_l + f_l(h_l). `attnres` keeps the Block AttnRes
bookkeeping of spec attnres.md §4 (completed block sums plus a partial), and Full AttnRes is the
same code with S = 1 (§7). Each read is a softmax over depth with its own zero-initialised
pseudo-query and RMSNorm'd keys (§2); the final read aggregates every source (§6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from attnres import tags
from attnres.ops.attnres import depth_attention, merged_depth_attention, phase1

KINDS = ("prenorm", "full", "block")


class KeyNorm(nn.Module):
    """The gain g of the keys' RMSNorm. Only its weight lives here: the normalisation itself is
    folded into the depth-attention op, which never materialises normalised keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = tags.set_group(nn.Parameter(torch.ones(dim)), tags.ADAMW_NO_DECAY)


class DepthRead(nn.Module):
    """One AttnRes read: a pseudo-query w (zeros) and a key-norm gain g (ones), both fp32.

    Zero queries make every read start as the uniform mean of its sources, which after the
    sublayer's PreNorm equals the baseline (spec §2, invariant I2)."""

    def __init__(self, dim: int, eps: float = 1e-6, impl: str = "recompute"):
        super().__init__()
        # Created without drawing random numbers, so the backbone's initialisation is the same
        # for every residual kind (invariant I13).
        self.query = tags.set_group(nn.Parameter(torch.zeros(dim)), tags.ADAMW_NO_DECAY)
        self.key_norm = KeyNorm(dim)
        self.eps = eps
        self.impl = impl

    def forward(self, sources: list[torch.Tensor], return_weights: bool = False):
        return depth_attention(self.query, sources, self.key_norm.weight, eps=self.eps,
                               return_weights=return_weights, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.query.shape[0]}, eps={self.eps}, impl={self.impl}"


@dataclass
class DepthRecord:
    """What a stream observed during one forward, filled only when asked (analysis mode)."""

    weights: dict[int, torch.Tensor] = field(default_factory=dict)     # read -> [n] mean over tokens
    output_rms: dict[int, float] = field(default_factory=dict)         # sublayer -> RMS(v_l)
    input_rms: dict[int, float] = field(default_factory=dict)          # sublayer -> RMS(h_l)
    stream_rms: dict[int, float] = field(default_factory=dict)         # sublayer -> RMS(carried state)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)     # sublayer -> v_l (kept for grads)


class Residual:
    """A residual strategy built from the config; makes read modules and per-forward streams."""

    def __init__(self, kind: str = "prenorm", block_size: int = 4, eps: float = 1e-6,
                 impl: str = "recompute", two_phase_group: int = 8,
                 state_dtype: torch.dtype | None = torch.float32):
        if kind not in KINDS:
            raise ValueError(f"residual kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "full":
            block_size = 1
        if block_size < 1:
            raise ValueError(f"attnres block_size must be >= 1, got {block_size}")
        self.kind = kind
        self.block_size = block_size
        self.eps = eps
        self.impl = impl
        self.two_phase_group = two_phase_group
        self.state_dtype = state_dtype

    @property
    def is_attnres(self) -> bool:
        return self.kind != "prenorm"

    def make_read(self, dim: int) -> DepthRead | None:
        return DepthRead(dim, self.eps, self.impl) if self.is_attnres else None

    def stream(self, embedding: torch.Tensor, reads: list[DepthRead | None],
               record: DepthRecord | None = None) -> "PreNormStream | AttnResStream":
        """`reads` holds the L per-sublayer reads followed by the final read."""
        # At least fp32 (bf16 embeddings are promoted); fp64 models stay fp64 so tests can be exact.
        x = embedding if self.state_dtype is None else \
            embedding.to(torch.promote_types(self.state_dtype, embedding.dtype))
        if not self.is_attnres:
            return PreNormStream(x, record)
        return AttnResStream(x, reads, self.block_size, self.impl, self.two_phase_group, record)

    def describe(self) -> str:
        if self.kind == "block":
            return f"block (S={self.block_size})"
        return self.kind


class PreNormStream:
    """h_1 = e; h_{l+1} = h_l + f_l(h_l); the final hidden state is h_{L+1}."""

    def __init__(self, embedding: torch.Tensor, record: DepthRecord | None = None):
        self.hidden = embedding
        self.record = record

    def sources(self) -> list[torch.Tensor]:
        return [self.hidden]

    def read(self, sub: int) -> torch.Tensor:
        if self.record is not None:
            self.record.input_rms[sub] = _rms(self.hidden)
        return self.hidden

    def write(self, sub: int, out: torch.Tensor) -> None:
        self.hidden = self.hidden + out.to(self.hidden.dtype)
        if self.record is not None:
            _record_output(self.record, sub, out)
            self.record.stream_rms[sub] = _rms(self.hidden)

    def final(self) -> torch.Tensor:
        return self.hidden


class AttnResStream:
    """Block AttnRes bookkeeping (spec §4, eager sealing); S = 1 is Full AttnRes.

    State: `completed` = [b_0 = e, b_1, ...] and `partial` = the running sum of the open block's
    outputs (None right after a block closes). Every source is held in the stream's dtype."""

    def __init__(self, embedding: torch.Tensor, reads: list[DepthRead], block_size: int,
                 impl: str = "recompute", two_phase_group: int = 8,
                 record: DepthRecord | None = None):
        if any(r is None for r in reads):
            raise ValueError("AttnRes stream needs a read module for every sublayer and the final read")
        self.reads = reads
        self.n_sublayers = len(reads) - 1
        self.block_size = block_size
        self.completed: list[torch.Tensor] = [embedding]
        self.partial: torch.Tensor | None = None
        self.record = record
        self.two_phase = impl == "two_phase"
        # Phase-1 results for the current scheduling group: read index -> (o1, lse1), and the
        # number of leading sources they cover.
        self.group_size = two_phase_group if block_size == 1 else block_size
        self._phase1: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._phase1_sources = 0

    def sources(self) -> list[torch.Tensor]:
        return self.completed if self.partial is None else self.completed + [self.partial]

    def read(self, sub: int) -> torch.Tensor:
        sources = self.sources()
        read = self.reads[sub]
        if self.record is not None:
            h, weights = read(sources, return_weights=True)
            self.record.weights[sub] = _mean_weights(weights)
            self.record.input_rms[sub] = _rms(h)
            return h
        if self.two_phase and len(sources) > 1:
            return self._two_phase_read(sub, sources)
        return read(sources)

    def write(self, sub: int, out: torch.Tensor) -> None:
        out = out.to(self.completed[0].dtype)
        self.partial = out if self.partial is None else self.partial + out
        if self.record is not None:
            _record_output(self.record, sub, out)
            carried = out if self.block_size == 1 else self.partial
            self.record.stream_rms[sub] = _rms(carried)
        l = sub + 1
        if l % self.block_size == 0 or l == self.n_sublayers:
            self.completed.append(self.partial)
            self.partial = None

    def final(self) -> torch.Tensor:
        if self.partial is not None:
            raise RuntimeError(f"final read before all {self.n_sublayers} sublayers were written")
        read = self.reads[-1]
        if self.record is not None:
            h, weights = read(self.completed, return_weights=True)
            self.record.weights[self.n_sublayers] = _mean_weights(weights)
            return h
        return read(self.completed)

    def _two_phase_read(self, sub: int, sources: list[torch.Tensor]) -> torch.Tensor:
        # A scheduling group starts at a block boundary (Block) or every `group_size` sublayers
        # (Full). Phase 1 batches all of the group's queries over the sources that exist now.
        if sub % self.group_size == 0 or sub not in self._phase1:
            first, last = sub, min(sub + self.group_size - (sub % self.group_size),
                                   self.n_sublayers)
            group = self.reads[first:last]
            queries = torch.stack([r.query for r in group])
            gains = torch.stack([r.key_norm.weight for r in group])
            n_prefix = len(self.completed)
            o1, lse1 = phase1(queries, self.completed, gains, group[0].eps)
            self._phase1 = {first + i: (o1[i], lse1[i]) for i in range(len(group))}
            self._phase1_sources = n_prefix
        o1, lse1 = self._phase1[sub]
        read = self.reads[sub]
        return merged_depth_attention(read.query, sources, read.key_norm.weight, read.eps,
                                      o1, lse1, self._phase1_sources)


def _rms(x: torch.Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


def _mean_weights(weights: torch.Tensor) -> torch.Tensor:
    return weights.detach().float().flatten(1).mean(dim=1).cpu()


def _record_output(record: DepthRecord, sub: int, out: torch.Tensor) -> None:
    record.output_rms[sub] = _rms(out)
    if out.requires_grad:
        out.retain_grad()
        record.outputs[sub] = out
