"""Residual strategies: how each sublayer's input and the final hidden state are formed.

A backbone talks to its residual mechanism through one small interface, so it never branches on
the residual kind:

    residual = Residual(cfg.residual, L)      # the config's section; holds no parameters
    read = residual.make_read(d)              # a module per read (None for PreNorm)
    stream = residual.stream(embedding, reads)
    for sub, f in enumerate(sublayers):       # sub = l - 1, 0-based
        h = stream.read(sub)                  # the sublayer input h_l
        stream.write(sub, f(h))               # its output v_l = f_l(h_l)
    h_final = stream.final()                  # before the final norm

`prenorm` is the standard residual h_{l+1} = h_l + f_l(h_l). `attnres` keeps the Block AttnRes
bookkeeping of docs/THEORY.md#block-attnres (completed block sums plus a partial), and Full
AttnRes is the same code with S = 1 (docs/THEORY.md#endpoints). Each read is a softmax over depth
with its own zero-initialised pseudo-query and RMSNorm'd keys (docs/THEORY.md#the-depth-attention-read);
the final read aggregates every source (docs/THEORY.md#the-final-read).

The Table-4 ablations (docs/THEORY.md#ablation-variants) plug into the same interface: depth-read
variants (`ReadOptions`, modules in `depth_variants.py`; the window is applied here, by the stream),
`denseformer` (PreNorm inside each layer, a depth-weighted average of the layer outputs at every
layer boundary) and `mhc` (4 hyper-connection streams, one mHC module around each sublayer).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from attnres import tags
from attnres.config import RESIDUAL_KINDS, ResidualConfig
from attnres.layers.depth_variants import (MHC_STREAMS, DenseMix, HyperConnection, ReadOptions,
                                           VariantRead, expand_streams, num_sources,
                                           reduce_streams)
from attnres.ops.attnres import (depth_attention, merged_depth_attention, phase1, scaled_query,
                                 source_inv_rms, source_key, stacked_read)
from attnres.ops.attnres.inference import root_d_eps
from attnres.ops.attnres.naive import compute_dtype, full_precision

class KeyNorm(nn.Module):
    """The gain g of the keys' RMSNorm. Only its weight lives here: the normalisation itself is
    folded into the depth-attention op, which never materialises normalised keys."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = tags.set_group(nn.Parameter(torch.ones(dim)), tags.ATTNRES)


class DepthRead(nn.Module):
    """One AttnRes read: a pseudo-query w (zeros) and a key-norm gain g (ones), both fp32.

    Zero queries make every read start as the uniform mean of its sources, 1/n times the
    baseline's hidden state; the sublayer's PreNorm then takes ε/n² (`Residual.norm_eps`) so
    that its output equals the baseline's at any ε (docs/DESIGN.md#exact-drop-in-at-step-0)."""

    def __init__(self, dim: int, eps: float = 1e-6, impl: str = "recompute"):
        super().__init__()
        # Created without drawing random numbers, so the backbone's initialisation is the same
        # for every residual kind (invariant I13).
        self.query = tags.set_group(nn.Parameter(torch.zeros(dim)), tags.ATTNRES)
        self.key_norm = KeyNorm(dim)
        self.eps = eps
        self.impl = impl

    def forward(self, sources: list[torch.Tensor], return_weights: bool = False, rms=None):
        """`rms`: optional per-source inverse RMS for the recompute op (`source_inv_rms`)."""
        return depth_attention(self.query, sources, self.key_norm.weight, eps=self.eps,
                               return_weights=return_weights, impl=self.impl, rms=rms)

    def extra_repr(self) -> str:
        return f"{self.query.shape[0]}, eps={self.eps}, impl={self.impl}"


@dataclass
class DepthRecord:
    """What a stream observed during one forward, filled only when asked (analysis mode)."""

    weights: dict[int, torch.Tensor] = field(default_factory=dict)     # read -> [n] mean over tokens
    entropy: dict[int, float] = field(default_factory=dict)            # read -> mean H(p) / log n
    output_rms: dict[int, float] = field(default_factory=dict)         # sublayer -> RMS(v_l)
    input_rms: dict[int, float] = field(default_factory=dict)          # sublayer -> RMS(h_l)
    stream_rms: dict[int, float] = field(default_factory=dict)         # sublayer -> RMS(carried state)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)     # sublayer -> v_l (kept for grads)


class Residual:
    """A residual strategy built from the config; makes read modules and per-forward streams."""

    def __init__(self, cfg: ResidualConfig | None = None, n_sublayers: int | None = None):
        """`cfg` is the config tree's `residual` section (the model config carries it unchanged);
        `n_sublayers` = L is needed by `num_blocks`, static mixing, denseformer and mhc, whose
        reads depend on their position."""
        cfg = cfg if cfg is not None else ResidualConfig()
        if cfg.kind not in RESIDUAL_KINDS:
            raise ValueError(f"residual kind {cfg.kind!r} is not one of {', '.join(RESIDUAL_KINDS)}")
        if cfg.num_blocks and n_sublayers is None:
            raise ValueError("residual.num_blocks needs the number of sublayers")
        self.cfg = cfg
        self.kind = cfg.kind
        self.block_size = cfg.sublayers_per_block(n_sublayers or 0)
        self.eps = cfg.eps
        self.impl = cfg.impl
        self.two_phase_group = cfg.two_phase_group
        self.state_dtype = torch.float32 if cfg.state_dtype == "float32" else None
        self.options = ReadOptions(cfg.query, cfg.mixing, cfg.kernel, cfg.key_norm,
                                   cfg.window or None, cfg.heads)
        self.n_sublayers = n_sublayers
        # Under no_grad the plain reads run through `InferenceAttnResStream`; False keeps the
        # training-path reads there too (the reference the tests and benchmarks compare with).
        self.fast_inference = True
        self._query_cache = None
        self._plain_read = self.options.plain_read  # a dataclass comparison: once, not per forward
        if self.is_attnres and self.options.window is not None and self.block_size != 1:
            raise ValueError("a depth window applies only to Full AttnRes")
        if self.is_attnres and self.impl == "two_phase" and self.options != ReadOptions():
            raise ValueError(f"two_phase supports only the default depth read, "
                             f"not {self.options.describe()}")
        if self._positional:
            if n_sublayers is None or n_sublayers < 1 or (self.kind == "denseformer" and n_sublayers % 2):
                raise ValueError(f"residual {self.kind} ({self.options.describe() or 'default'}) "
                                 f"needs the number of sublayers (even), got {n_sublayers}")

    @property
    def is_attnres(self) -> bool:
        return self.kind in ("full", "block")

    @property
    def _positional(self) -> bool:
        """Whether a read's module depends on its position (so `make_read` needs `sub`)."""
        return self.kind in ("denseformer", "mhc") or (self.is_attnres and self.options.mixing == "static")

    def make_read(self, dim: int, sub: int | None = None) -> nn.Module | None:
        """The module for read `sub` (0-based sublayer; L = the final read), or None if it has
        none. The default options give today's `DepthRead`."""
        if self.kind == "prenorm":
            return None
        if self._positional:
            if sub is None or not 0 <= sub <= self.n_sublayers:
                raise ValueError(f"{self.kind} reads need their index in 0..{self.n_sublayers}, got {sub}")
        if self.kind == "denseformer":
            # The mix after layer j (j = 1..L_b) feeds layer j's successor: it lives in the read
            # before that layer's mixer, or in the final read; Y_0 = e needs no module.
            layer_start = sub % 2 == 0 and sub > 0
            return DenseMix(sub // 2 + 1) if layer_start or sub == self.n_sublayers else None
        if self.kind == "mhc":
            return HyperConnection(dim, MHC_STREAMS, sub) if sub < self.n_sublayers else None
        if self.options.plain_read:
            return DepthRead(dim, self.eps, self.impl)
        n = None
        if self.options.mixing == "static":
            n = num_sources(sub, self.n_sublayers, self.block_size, self.options.window)
        return VariantRead(dim, self.options, self.eps, self.impl, n)

    def stream(self, embedding: torch.Tensor, reads: list[DepthRead | None],
               record: DepthRecord | None = None):
        """`reads` holds the L per-sublayer reads followed by the final read."""
        # At least fp32 (bf16 embeddings are promoted); fp64 models stay fp64 so tests can be exact.
        x = embedding if self.state_dtype is None else \
            embedding.to(torch.promote_types(self.state_dtype, embedding.dtype))
        if self.kind == "prenorm":
            return PreNormStream(x, record)
        if self.kind == "denseformer":
            return DenseFormerStream(x, reads, record)
        if self.kind == "mhc":
            return HyperStream(x, reads, MHC_STREAMS, record)
        if self._inference_stream(x, reads, record):
            return InferenceAttnResStream(x, reads, self.block_size, self.options.window,
                                          self._inference_queries(reads, x))
        return AttnResStream(x, reads, self.block_size, self.impl, self.two_phase_group, record,
                             self.options.window,
                             share_rms=self.impl == "recompute" and self._plain_read)

    def _inference_stream(self, x: torch.Tensor, reads: list, record) -> bool:
        """Whether this forward can take the inference reads: no autograd, no analysis record,
        plain reads (a depth window is fine), sources already in the compute dtype (fp32/fp64,
        so that the stream's rounding is unchanged), and not the `naive` reference impl."""
        return (self.fast_inference and not torch.is_grad_enabled() and record is None
                and self._plain_read and self.impl != "naive"
                and compute_dtype(x.dtype) == x.dtype and isinstance(reads[0], DepthRead))

    def _inference_queries(self, reads: list[DepthRead], x: torch.Tensor):
        """The folded queries of `reads`, reused across forwards (gathering and folding 2(L+1)
        parameters was about a fifth of the stream's cost per decoded token): valid while
        the same parameter tensors are at the same versions (an optimizer step, `copy_` or
        `load_state_dict` bumps a version) and dtype and device are unchanged."""
        params = [t for r in reads for t in (r._parameters["query"],
                                             r._modules["key_norm"]._parameters["weight"])]
        versions = [t._version for t in params]
        cache = self._query_cache
        if (cache is None or cache[0] != (x.dtype, x.device) or len(cache[1]) != len(params)
                or not all(map(operator.is_, cache[1], params)) or cache[2] != versions):
            cache = self._query_cache = ((x.dtype, x.device), params, versions,
                                         inference_queries(reads, x.dtype, x.device))
        return cache[3]

    def init_read_scale(self, sub: int) -> float:
        """c such that read `sub` (0-based sublayer; L = the final read) returns c times the
        baseline's hidden state while its parameters are at their initial values.

        A zero query (or zero static logits) gives uniform softmax weights 1/n, and the sources
        of a read always sum to the baseline's hidden state, so c = 1/n with n fixed per read;
        sigmoid gates start at σ(0) = 1/2 each, so c = 1/2. A depth window drops sources, so
        the windowed read is not a multiple of the baseline; it gets 1/n of what it reads."""
        if not self.is_attnres:
            return 1.0
        if self.options.kernel == "sigmoid":
            return 0.5
        # A sublayer read's source count does not depend on L (only the final read's does), so
        # a Residual built without n_sublayers still answers for every sublayer read.
        n_sublayers = self.n_sublayers if self.n_sublayers is not None else sub + 1
        return 1.0 / num_sources(sub, n_sublayers, self.block_size, self.options.window)

    def norm_eps(self, sub: int, eps: float) -> float:
        """The ε of the RMSNorm that reads the output of read `sub` (the sublayer's PreNorm, or
        the final norm for sub = L): ε·c² with c = `init_read_scale(sub)`.

        RMSNorm_{ε c²}(c·x) = x / √(ms(x) + ε) = RMSNorm_ε(x), so at initialisation every sublayer
        input after its PreNorm, and the logits, equal the PreNorm baseline's at the configured ε
        (invariant I2, docs/DESIGN.md#exact-drop-in-at-step-0), not only at ε = 0. Once trained, the
        read is a weighted mean of sources of the baseline's scale, which ε/n² leaves as safe from
        division by zero as ε does (ε/n² ≥ 1e-5/33² ≈ 1e-8 in fp32 at n = 33)."""
        return eps * self.init_read_scale(sub) ** 2

    def describe(self) -> str:
        name = f"block (S={self.block_size})" if self.kind == "block" else self.kind
        variant = self.options.describe() if self.is_attnres else ""
        return f"{name} [{variant}]" if variant else name


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
        self.hidden = self._carry(sub, self.hidden + out.to(self.hidden.dtype))
        if self.record is not None:
            _record_output(self.record, sub, out)
            self.record.stream_rms[sub] = _rms(self.hidden)

    def _carry(self, sub: int, hidden: torch.Tensor) -> torch.Tensor:
        """The state carried on after sublayer `sub`'s residual add (here: unchanged)."""
        return hidden

    def final(self) -> torch.Tensor:
        return self.hidden


class AttnResStream:
    """Block AttnRes bookkeeping (docs/THEORY.md#bookkeeping, eager sealing); S = 1 is Full AttnRes.

    State: `completed` = [b_0 = e, b_1, ...] and `partial` = the running sum of the open block's
    outputs (None right after a block closes). Every source is held in the stream's dtype."""

    def __init__(self, embedding: torch.Tensor, reads: list[DepthRead], block_size: int,
                 impl: str = "recompute", two_phase_group: int = 8,
                 record: DepthRecord | None = None, window: int | None = None,
                 share_rms: bool = False):
        if any(r is None for r in reads):
            raise ValueError("AttnRes stream needs a read module for every sublayer and the final read")
        self.reads = reads
        self.n_sublayers = len(reads) - 1
        self.block_size = block_size
        self.completed: list[torch.Tensor] = [embedding]
        self.partial: torch.Tensor | None = None
        self.record = record
        self.window = window  # Full only: keep the embedding and the W most recent outputs
        self.two_phase = impl == "two_phase"
        # Phase-1 results for the current scheduling group: read index -> (o1, lse1), and the
        # number of leading sources they cover.
        self.group_size = two_phase_group if block_size == 1 else block_size
        self._phase1: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._phase1_sources = 0
        # Plain recompute reads: each completed source's inverse RMS, computed once for every
        # read that sees it (source id -> (source, r)); the partial is read once, by the next read.
        self.share_rms = share_rms and record is None
        self._rms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def sources(self) -> list[torch.Tensor]:
        return self.completed if self.partial is None else self.completed + [self.partial]

    def read(self, sub: int) -> torch.Tensor:
        sources = self.sources()
        read = self.reads[sub]
        if self.record is not None:
            h, weights = read(sources, return_weights=True)
            self._record_weights(sub, weights)
            self.record.input_rms[sub] = _rms(h)
            return h
        if self.two_phase and len(sources) > 1:
            return self._two_phase_read(sub, sources)
        if self.share_rms and len(sources) > 1:
            return read(sources, rms=self._source_rms(sources))
        return read(sources)

    def _source_rms(self, sources: list[torch.Tensor]) -> list[torch.Tensor | None]:
        out = []
        for v in sources:
            if v is self.partial:
                out.append(None)
                continue
            hit = self._rms.get(id(v))
            if hit is None or hit[0] is not v:
                hit = self._rms[id(v)] = (v, source_inv_rms(v, self.reads[0].eps))
            out.append(hit[1])
        return out

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
            if self.window is not None and len(self.completed) > self.window + 1:
                # SWA over depth (docs/THEORY.md#ablation-variants): older outputs are never read again
                self.completed = [self.completed[0]] + self.completed[-self.window:]

    def final(self) -> torch.Tensor:
        if self.partial is not None:
            raise RuntimeError(f"final read before all {self.n_sublayers} sublayers were written")
        read = self.reads[-1]
        if self.record is not None:
            h, weights = read(self.completed, return_weights=True)
            self._record_weights(self.n_sublayers, weights)
            return h
        if self.share_rms and len(self.completed) > 1:
            return read(self.completed, rms=self._source_rms(self.completed))
        return read(self.completed)

    def _record_weights(self, read: int, weights: torch.Tensor) -> None:
        self.record.weights[read] = _mean_weights(weights)
        if weights.shape[0] > 1:
            self.record.entropy[read] = _mean_entropy(weights)

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


def inference_queries(reads: list[DepthRead], dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, ...]:
    """`scaled_query`(w ⊙ g) of every read, [d] each, in `dtype`, without autograd."""
    with torch.no_grad(), full_precision(device):
        q = torch.stack([r.query for r in reads]).to(dtype)
        g = torch.stack([r.key_norm.weight for r in reads]).to(dtype)
        return scaled_query(q * g).unbind(0)


class InferenceAttnResStream(AttnResStream):
    """The same bookkeeping as `AttnResStream` under `no_grad` (docs/THEORY.md#inference).

    Every source's normalised key is computed once, when the source is formed (the partial's
    when a read first sees it; a completed block keeps the partial's key when it closes), so a
    read only stacks keys and values, forms the logits and the weighted sum as products and sums,
    and takes one softmax (`stacked_read`). The folded queries (`inference_queries`) come from
    the `Residual`'s cache, made once per parameter version. No autograd Function and no input
    checks run. `completed` and `partial` stay the public
    state; a caller that replaces them (a pipeline stage) gets the keys rebuilt on the next read."""

    def __init__(self, embedding: torch.Tensor, reads: list[DepthRead], block_size: int,
                 window: int | None = None, queries: tuple[torch.Tensor, ...] | None = None):
        super().__init__(embedding, reads, block_size, window=window)
        self.eps = reads[0].eps
        self._dtype = embedding.dtype
        # Autocast would run the logit and weighted-sum products in bf16; the reads keep the
        # compute dtype (docs/THEORY.md#numerics), at the price of a context per read.
        self._autocast = torch.is_autocast_enabled(embedding.device.type)
        self._queries = queries if queries is not None else \
            inference_queries(reads, embedding.dtype, embedding.device)
        self._root = root_d_eps(embedding, self.eps)
        self._keys = [source_key(embedding, self.eps, self._root)]  # keys of `completed`, in order
        self._partial_key = self._partial_of_key = None  # the key of `partial`, and whose it is

    # Written flat on purpose: at one decoded token a read is a few microseconds of kernels, so
    # each Python call and list built here is a visible share of it.

    def _sync_keys(self) -> None:
        if len(self._keys) != len(self.completed):  # `completed` replaced from outside
            self._keys = [source_key(v, self.eps, self._root) for v in self.completed]

    def _key_of_partial(self) -> torch.Tensor:
        if self._partial_of_key is not self.partial:
            self._partial_key = source_key(self.partial, self.eps, self._root)
            self._partial_of_key = self.partial
        return self._partial_key

    def _read(self, q: torch.Tensor) -> torch.Tensor:
        self._sync_keys()
        if self.partial is None:
            values, keys = self.completed, self._keys
        else:
            values, keys = self.completed + [self.partial], self._keys + [self._key_of_partial()]
        if self._autocast:
            with full_precision(values[0].device):
                return stacked_read(q, keys, values)
        return stacked_read(q, keys, values)

    def read(self, sub: int) -> torch.Tensor:
        return self._read(self._queries[sub])

    def write(self, sub: int, out: torch.Tensor) -> None:
        if out.dtype != self._dtype:
            out = out.to(self._dtype)
        self.partial = out if self.partial is None else self.partial + out
        l = sub + 1
        if l % self.block_size == 0 or l == self.n_sublayers:
            self._sync_keys()
            self._keys.append(self._key_of_partial())
            self.completed.append(self.partial)
            self.partial = self._partial_key = self._partial_of_key = None
            if self.window is not None and len(self.completed) > self.window + 1:
                self.completed = [self.completed[0]] + self.completed[-self.window:]
                self._keys = [self._keys[0]] + self._keys[-self.window:]

    def final(self) -> torch.Tensor:
        if self.partial is not None:
            raise RuntimeError(f"final read before all {self.n_sublayers} sublayers were written")
        return self._read(self._queries[self.n_sublayers])


class DenseFormerStream(PreNormStream):
    """DenseFormer (docs/THEORY.md#ablation-variants): the PreNorm residual inside each layer, and
    after layer j Y_j = Σ_{i=0..j} a_{j,i} X_i over the layer outputs X_i (X_0 = e); layer j+1 reads
    Y_j and the final norm reads Y_{L_b}. The mix runs after every second write (a layer boundary),
    with the `DenseMix` stored as the read before the next layer's mixer (or the final read)."""

    def __init__(self, embedding: torch.Tensor, reads: list, record: DepthRecord | None = None):
        super().__init__(embedding, record)
        self.reads = reads
        self.n_sublayers = len(reads) - 1
        self.outputs = [embedding]  # X_0 = e, X_1, ...

    def sources(self) -> list[torch.Tensor]:
        return self.outputs

    def _carry(self, sub: int, hidden: torch.Tensor) -> torch.Tensor:
        if sub % 2 == 0:
            return hidden
        self.outputs.append(hidden)  # layer boundary: X_j = the layer's output, then Y_j
        return self.reads[sub + 1](self.outputs)

    def final(self) -> torch.Tensor:
        if len(self.outputs) != self.n_sublayers // 2 + 1:
            raise RuntimeError(f"final read before all {self.n_sublayers} sublayers were written")
        return self.hidden


class HyperStream:
    """mHC (docs/THEORY.md#ablation-variants): m residual streams folded into the batch,
    [(B·m), T, d]. Before sublayer l its `HyperConnection` mixes the streams and forms the input
    (read); its output is written back into every stream (write). The final hidden state is the
    sum of the streams."""

    def __init__(self, embedding: torch.Tensor, reads: list, n_streams: int = MHC_STREAMS,
                 record: DepthRecord | None = None):
        self.reads = reads
        self.n_streams = n_streams
        self.streams = expand_streams(embedding, n_streams)
        self.record = record
        self._add = None

    def sources(self) -> list[torch.Tensor]:
        return [self.streams]

    def read(self, sub: int) -> torch.Tensor:
        h, self._add = self.reads[sub](self.streams)
        if self.record is not None:
            self.record.input_rms[sub] = _rms(h)
        return h

    def write(self, sub: int, out: torch.Tensor) -> None:
        self.streams = self._add(out.to(self.streams.dtype))
        self._add = None
        if self.record is not None:
            _record_output(self.record, sub, out)
            self.record.stream_rms[sub] = _rms(self.streams)

    def final(self) -> torch.Tensor:
        return reduce_streams(self.streams, self.n_streams)


def _rms(x: torch.Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


def _mean_weights(weights: torch.Tensor) -> torch.Tensor:
    return weights.detach().float().flatten(1).mean(dim=1).cpu()


def _mean_entropy(weights: torch.Tensor) -> float:
    """Mean over tokens (and heads) of the depth distribution's entropy over log n: 1 for uniform
    weights, 0 for all weight on one source. Sigmoid gates are normalised first."""
    p = weights.detach().double()
    p = p / p.sum(0, keepdim=True).clamp_min(1e-300)
    h = -(p * p.clamp_min(1e-300).log()).sum(0)
    return float(h.mean() / torch.log(torch.tensor(float(p.shape[0]), dtype=torch.float64)))


def _record_output(record: DepthRecord, sub: int, out: torch.Tensor) -> None:
    record.output_rms[sub] = _rms(out)
    if out.requires_grad:
        out.retain_grad()
        record.outputs[sub] = out
