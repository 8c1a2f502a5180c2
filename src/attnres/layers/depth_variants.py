"""The ablation rows of the paper's Table 4 as modules (docs/THEORY.md#ablation-variants).

Depth-read variants, chosen by `ReadOptions`:

    query     static | input_dependent   q_l = W_l · RMSNorm_q(x), x = the most recent source
    mixing    attention | static         per-read logits s_l ∈ R^{n_l}, shared by all tokens
    kernel    softmax | sigmoid          h = Σ σ(z_i) v_i, no normalisation across sources
    key_norm  rms_gain | rms | none      keys RMSNorm'd with a gain / without / raw sources
    window    None | W                   Full only: the embedding plus the W most recent outputs
    heads     1 | H                      H contiguous channel groups, a softmax per group

The default options are not handled here: `Residual.make_read` keeps the plain `DepthRead` and its
recompute op for them, bit for bit. A variant the op covers (softmax over a static query with RMS
keys, with or without gain, one head) still calls the op; every other variant is computed by
`plain_depth_read` with plain autograd over the stacked sources
(docs/THEORY.md#rules-the-tests-rely-on). The window is applied by the stream (`AttnResStream`),
which hands a read only the sources it may see.

Two further residual kinds live here as modules; their streams are in `residual.py`:
- `DenseMix`: DenseFormer's depth-weighted average after a layer (identity-initialised scalars).
- `HyperConnection`: mHC with m streams from the `hyper-connections` package (lazy import).

Every parameter is fp32 and created from zeros, ones or an identity, so no random number is
drawn and the backbone initialisation is the same for every residual kind (invariant I13). The
read variants' parameters are tagged `attnres` (AdamW, no decay, LR × `residual.lr_mult`, like the
plain read's); DenseFormer's and mHC's are tagged `adamw_no_decay` (the global LR, as their papers
train them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from attnres import tags
from attnres.ops.attnres import depth_attention
from attnres.ops.attnres.naive import check_inputs, compute_dtype, full_precision, single_source

QUERIES = ("static", "input_dependent")
MIXINGS = ("attention", "static")
KERNELS = ("softmax", "sigmoid")
KEY_NORMS = ("rms_gain", "rms", "none")
MHC_STREAMS = 4  # m of docs/THEORY.md#ablation-variants


@dataclass(frozen=True)
class ReadOptions:
    """Which depth read every sublayer and the final read use (docs/THEORY.md#ablation-variants)."""

    query: str = "static"
    mixing: str = "attention"
    kernel: str = "softmax"
    key_norm: str = "rms_gain"
    window: int | None = None    # Full only; None = every source
    heads: int = 1

    def __post_init__(self):
        for name, choices in (("query", QUERIES), ("mixing", MIXINGS), ("kernel", KERNELS),
                              ("key_norm", KEY_NORMS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"depth read {name} {getattr(self, name)!r} is not one of "
                                 f"{', '.join(choices)}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"depth read window must be >= 1 (or None), got {self.window}")
        if self.heads < 1:
            raise ValueError(f"depth read heads must be >= 1, got {self.heads}")
        if self.mixing == "static" and self.query != "static":
            raise ValueError("static mixing has no query; it cannot be input-dependent")
        if self.mixing == "static" and self.heads != 1:
            raise ValueError("static mixing has one logit per source; it takes no heads")

    @property
    def plain_read(self) -> bool:
        """True when `DepthRead` does it: the default read (a window only changes the sources)."""
        return replace(self, window=None) == ReadOptions()

    @property
    def uses_op(self) -> bool:
        """True when the depth-attention op covers the read: softmax, static query, RMS keys."""
        return (self.query, self.mixing, self.kernel, self.heads) == \
            ("static", "attention", "softmax", 1) and self.key_norm != "none"

    def describe(self) -> str:
        default = ReadOptions()
        return ", ".join(f"{k}={getattr(self, k)}" for k in default.__dataclass_fields__
                         if getattr(self, k) != getattr(default, k))


def num_sources(read: int, n_sublayers: int, block_size: int, window: int | None = None) -> int:
    """Sources read `read` (0-based sublayer index; `n_sublayers` = the final read) sees
    (docs/THEORY.md#block-attnres)."""
    if read == n_sublayers:
        n = -(-n_sublayers // block_size) + 1                  # [b_0, ..., b_N]
    else:
        l = read + 1
        block = (l - 1) // block_size + 1                      # n, 1-based
        pos = l - (block - 1) * block_size                     # i, 1-based position in the block
        n = block + (pos >= 2)                                 # [b_0..b_{n-1}] (+ the partial)
    return n if window is None else min(n, 1 + window)


def _fp32_param(t: torch.Tensor, group: str = tags.ATTNRES) -> nn.Parameter:
    return tags.set_group(nn.Parameter(t), group)


class Gain(nn.Module):
    """An RMSNorm gain initialised to ones (the norm itself is computed by the read)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = _fp32_param(torch.ones(dim))


def plain_depth_read(query: torch.Tensor, sources: list[torch.Tensor],
                     key_norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
                     normalise_keys: bool = True, kernel: str = "softmax", heads: int = 1,
                     return_weights: bool = False):
    """A depth read with plain autograd over the stacked sources: the reference of every variant.

    Channels split into `heads` contiguous groups of d/H. Per token and group h:
    z_i = r_i · Σ_{c∈h} (w ⊙ g)[c] v_i[c] with r_i the inverse RMS over the group's channels
    (r_i = 1 when `normalise_keys` is False), p = softmax_i(z) (exp(z - m)/l, exactly uniform
    for equal logits) or σ(z) (no normalisation), and h[c∈h] = Σ_i p_i v_i[c].

    Args:
        query: w, [d], or one query per token, [..., d] (the input-dependent variant).
        sources: list of n >= 1 tensors [..., d] of one shape, dtype and device.
        key_norm_weight: key gain g [d], or None (g = 1).
        eps: added to the mean square inside the square root.
        normalise_keys: RMS-normalise the keys (False: z_i = w · v_i on the raw source).
        kernel: "softmax" or "sigmoid".
        heads: number of channel groups H; d % H must be 0.
        return_weights: also return the weights.

    Returns:
        h [..., d] in the sources' dtype (for softmax and n = 1, `sources[0]` itself); with
        `return_weights` also p [n, ...] (one head) or [n, ..., H], detached, in the compute dtype.
    """
    if query.dim() == 1:
        check_inputs(query, sources, key_norm_weight)
    else:
        check_inputs(query[(0,) * (query.dim() - 1)], sources, key_norm_weight)
    v0 = sources[0]
    d = v0.shape[-1]
    if d % heads:
        raise ValueError(f"depth read heads {heads} do not divide the width {d}")
    if kernel == "softmax" and len(sources) == 1:
        return single_source(v0, return_weights)
    cdt = compute_dtype(v0.dtype)
    with full_precision(v0.device):
        V = torch.stack(sources).to(cdt).unflatten(-1, (heads, d // heads))  # [n, ..., H, d/H]
        q = query.to(cdt)
        if key_norm_weight is not None:
            q = q * key_norm_weight.to(cdt)
        z = (V * q.unflatten(-1, (heads, d // heads))).sum(-1)                 # [n, ..., H]
        if normalise_keys:
            z = z * torch.rsqrt(V.square().mean(-1) + eps)
        if kernel == "softmax":
            e = torch.exp(z - z.amax(0, keepdim=True).detach())
            p = e / e.sum(0, keepdim=True)
        else:
            p = torch.sigmoid(z)
        h = (p.unsqueeze(-1) * V).sum(0).flatten(-2).to(v0.dtype)
    if not return_weights:
        return h
    p = p.detach()
    return h, (p.squeeze(-1) if heads == 1 else p)


class VariantRead(nn.Module):
    """A depth read under non-default `ReadOptions` (docs/THEORY.md#ablation-variants);
    zero-initialised like `DepthRead`.

    Parameters (all fp32, none random):
    - `query` [d] zeros (static query), or `query_proj` [d, d] zeros (W_l) and `query_norm.weight`
      [d] ones (RMSNorm_q) for the input-dependent query;
    - `key_norm.weight` [d] ones with `key_norm: rms_gain`;
    - `logits` [n_sources] zeros for static mixing (no query, no keys).
    Multihead splits w and g into groups, so the count is unchanged.
    """

    def __init__(self, dim: int, options: ReadOptions, eps: float = 1e-6,
                 impl: str = "recompute", n_sources: int | None = None):
        super().__init__()
        if dim % options.heads:
            raise ValueError(f"attnres heads {options.heads} do not divide d_model {dim}")
        self.options, self.eps, self.impl = options, eps, impl
        if options.mixing == "static":
            if n_sources is None or n_sources < 1:
                raise ValueError("a static-mixing read needs its number of sources")
            self.logits = _fp32_param(torch.zeros(n_sources))
            return
        if options.query == "static":
            self.query = _fp32_param(torch.zeros(dim))
        else:
            self.query_proj = _fp32_param(torch.zeros(dim, dim))
            self.query_norm = Gain(dim)
        self.key_norm = Gain(dim) if options.key_norm == "rms_gain" else None

    def forward(self, sources: list[torch.Tensor], return_weights: bool = False):
        o = self.options
        if o.mixing == "static":
            return self._static_mix(sources, return_weights)
        gain = self.key_norm.weight if self.key_norm is not None else None
        if o.uses_op:
            return depth_attention(self.query, sources, gain, eps=self.eps,
                                   return_weights=return_weights, impl=self.impl)
        query = self.query if o.query == "static" else self._input_query(sources[-1])
        return plain_depth_read(query, sources, gain, self.eps, o.key_norm != "none", o.kernel,
                                o.heads, return_weights)

    def _input_query(self, x: torch.Tensor) -> torch.Tensor:
        """q_l = W_l · RMSNorm_q(x) per token, in the compute dtype."""
        cdt = compute_dtype(x.dtype)
        with full_precision(x.device):
            x = x.to(cdt)
            xn = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
            return (xn * self.query_norm.weight.to(cdt)) @ self.query_proj.to(cdt).T

    def _static_mix(self, sources: list[torch.Tensor], return_weights: bool):
        """h = Σ_i α_i v_i with α = softmax(s) (or σ(s)), the same for every token."""
        if len(sources) != self.logits.shape[0]:
            raise ValueError(f"static-mixing read owns {self.logits.shape[0]} logits, "
                             f"got {len(sources)} sources")
        v0 = sources[0]
        if self.options.kernel == "softmax" and len(sources) == 1:
            return single_source(v0, return_weights)
        cdt = compute_dtype(v0.dtype)
        with full_precision(v0.device):
            s = self.logits.to(cdt)
            a = torch.softmax(s, 0) if self.options.kernel == "softmax" else torch.sigmoid(s)
            h = a[0] * v0.to(cdt)
            for a_i, v in zip(a[1:], sources[1:]):
                h = h + a_i * v.to(cdt)
            h = h.to(v0.dtype)
        if not return_weights:
            return h
        return h, a.detach().reshape(-1, *[1] * (v0.dim() - 1)).expand(-1, *v0.shape[:-1])

    def extra_repr(self) -> str:
        return f"{self.options.describe()}, eps={self.eps}"


class DenseMix(nn.Module):
    """DenseFormer's depth-weighted average Y_j = Σ_{i=0..j} a_{j,i} X_i (docs/THEORY.md#ablation-variants).

    `weight` [j+1] starts as the identity (a_{j,j} = 1, the rest 0), so Y_j = X_j exactly and
    the model starts as the PreNorm baseline, bit for bit. No softmax, no token dependence."""

    def __init__(self, n_inputs: int):
        super().__init__()
        w = torch.zeros(n_inputs)
        w[-1] = 1.0
        self.weight = _fp32_param(w, tags.ADAMW_NO_DECAY)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.weight.shape[0]:
            raise ValueError(f"DenseFormer mix owns {self.weight.shape[0]} weights, "
                             f"got {len(inputs)} inputs")
        x0 = inputs[0]
        a = self.weight.to(torch.promote_types(self.weight.dtype, x0.dtype))
        y = a[0] * x0
        for a_i, x in zip(a[1:], inputs[1:]):
            y = y + a_i * x
        return y.to(x0.dtype)


class HyperConnection(nn.Module):
    """mHC around one sublayer (arXiv 2512.24880), from the `hyper-connections` package.

    The package's `mHC` keeps m residual streams folded into the batch, `[(B·m), T, d]`. Its
    call is split exactly like our stream interface: `forward(streams)` is the width connection
    (Sinkhorn-projected mixing of the streams, and the sublayer input), and the returned
    `add_residual(out)` is the depth connection (the sublayer output written back into the m
    streams). So it wraps each sublayer, not each layer. `layer_index` fixes which stream the
    sublayer starts reading from (the package would otherwise draw it with `random`)."""

    def __init__(self, dim: int, n_streams: int = MHC_STREAMS, layer_index: int = 0):
        super().__init__()
        from hyper_connections import mHC  # only residual.kind = mhc needs the package

        self.n_streams = n_streams
        self.mhc = mHC(n_streams, dim=dim, layer_index=layer_index)
        for p in self.mhc.parameters():
            tags.set_group(p, tags.ADAMW_NO_DECAY)

    def forward(self, streams: torch.Tensor):
        """streams [(B·m), T, d] -> (sublayer input [B, T, d], add_residual(out) -> streams).

        Both halves run with autocast off, like every other residual computation (the package
        casts to fp32 itself, but autocast would still lower its einsums)."""
        with full_precision(streams.device):
            h, add = self.mhc(streams)

        def add_residual(out: torch.Tensor) -> torch.Tensor:
            with full_precision(out.device):
                return add(out)

        return h, add_residual


def expand_streams(x: torch.Tensor, n_streams: int) -> torch.Tensor:
    """[B, T, d] -> [(B·m), T, d]: every stream starts as the embedding (the package's layout)."""
    from hyper_connections import mc_get_expand_reduce_stream_functions

    return mc_get_expand_reduce_stream_functions(n_streams)[0](x)


def reduce_streams(x: torch.Tensor, n_streams: int) -> torch.Tensor:
    """[(B·m), T, d] -> [B, T, d]: the sum of the streams, as the package reduces them."""
    from hyper_connections import mc_get_expand_reduce_stream_functions

    return mc_get_expand_reduce_stream_functions(n_streams)[1](x)
