"""Two-phase depth attention (docs/THEORY.md#two-phase-computation): a batched phase 1, then
online-softmax merges.

The pseudo-queries do not depend on the input, so all reads of a block (or of a Full-AttnRes
scheduling group) can attend over the sources that exist before it starts in one batched
pass: `phase1`. Each read then merges the few sources produced inside the group:
`merged_depth_attention`. Gradients come from the recomputing Function of `recompute.py`,
which adopts the merged output and lse in forward and recomputes over the full source list in
backward, so o1 is never saved.
"""

from __future__ import annotations

import torch

from .naive import (check_inputs, compute_dtype, folded_query, full_precision, inv_rms, logit,
                    single_source)
from .recompute import DepthAttentionFunction, depth_weights

Tensor = torch.Tensor


@torch.no_grad()
def phase1(
    queries: Tensor,
    sources: list[Tensor],
    key_norm_weights: Tensor | None = None,
    eps: float = 1e-6,
    inv_rms_cache: list[Tensor | None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Attend S_n pseudo-queries over the same sources in one pass over each source.

    Args:
        queries: pseudo-queries of the group's reads, [S_n, d].
        sources: list of n tensors [..., d] (the completed sources), one shape, dtype, device.
        key_norm_weights: their key-norm gains, [S_n, d], or None for no gain.
        eps: key RMSNorm epsilon.
        inv_rms_cache: optional per-source inverse RMS r_j [...] (None entries are computed);
            a completed block never changes, so its r_j can be cached when it closes.

    Returns:
        o1: [S_n, ..., d], the normalised partial outputs Σ_j p_j v_j, in the compute dtype.
        lse1: [S_n, ...], log Σ_j exp(z_j), in the compute dtype.
    """
    if queries.dim() != 2 or queries.shape[0] == 0:
        raise ValueError(f"queries must be [S_n, d] with S_n >= 1, got {tuple(queries.shape)}")
    if key_norm_weights is not None and key_norm_weights.shape != queries.shape:
        raise ValueError(
            f"key_norm_weights must match queries {tuple(queries.shape)}, got {tuple(key_norm_weights.shape)}"
        )
    check_inputs(queries[0], sources, None if key_norm_weights is None else key_norm_weights[0])
    if inv_rms_cache is not None and len(inv_rms_cache) != len(sources):
        raise ValueError(f"inv_rms_cache has {len(inv_rms_cache)} entries for {len(sources)} sources")

    cdt = compute_dtype(sources[0].dtype)
    cache = inv_rms_cache if inv_rms_cache is not None else [None] * len(sources)
    with full_precision(sources[0].device):
        Q = folded_query(queries, key_norm_weights, cdt)  # [S_n, d]
        m = s = o = None
        for v, r in zip(sources, cache):
            vc = v.to(cdt)
            r = inv_rms(vc, eps) if r is None else r.to(cdt)
            z = ((vc @ Q.T) * r.unsqueeze(-1)).movedim(-1, 0)  # [S_n, ...]
            if o is None:
                m, s = z, torch.ones_like(z)
                o = vc.expand(Q.shape[0], *vc.shape).clone(memory_format=torch.contiguous_format)
                continue
            # Online softmax (Milakov & Gimelshein): rescale the running (m, s, o) to the new max.
            m_new = torch.maximum(m, z)
            scale, e = torch.exp(m - m_new), torch.exp(z - m_new)
            s = s * scale + e
            o.mul_(scale.unsqueeze(-1)).addcmul_(e.unsqueeze(-1), vc)
            m = m_new
        o.div_(s.unsqueeze(-1))
        return o, m + torch.log(s)


def merged_depth_attention(
    query: Tensor,
    sources: list[Tensor],
    key_norm_weight: Tensor | None,
    eps: float,
    o1: Tensor,
    lse1: Tensor,
    n_phase1: int,
) -> Tensor:
    """Phase 2 of one read: merge sources[n_phase1:] into phase 1's (o1, lse1) of this query.

    Args:
        query: pseudo-query w of this read, [d].
        sources: the read's full source list, n tensors [..., d]; the first `n_phase1` are
            the ones phase 1 attended over, the rest (0 or more) are merged here in order.
        key_norm_weight: key-norm gain g, [d], or None.
        eps: key RMSNorm epsilon.
        o1: this query's slice of phase 1's output, [..., d] (compute dtype).
        lse1: this query's slice of phase 1's lse, [...].
        n_phase1: how many leading sources (o1, lse1) cover, 1 <= n_phase1 <= n.

    Returns:
        h: [..., d] in the sources' dtype (for n = 1, `sources[0]` itself), differentiable
        w.r.t. query, gain and every source through the recomputing backward.
    """
    check_inputs(query, sources, key_norm_weight)
    v0, n = sources[0], len(sources)
    if not 1 <= n_phase1 <= n:
        raise ValueError(f"n_phase1 must be in [1, {n}], got {n_phase1}")
    if o1.shape != v0.shape or lse1.shape != v0.shape[:-1]:
        raise ValueError(
            f"o1 {tuple(o1.shape)} / lse1 {tuple(lse1.shape)} do not match sources {tuple(v0.shape)}"
        )
    if n == 1:
        return v0
    cdt = compute_dtype(v0.dtype)
    with torch.no_grad(), full_precision(v0.device):
        q = folded_query(query, key_norm_weight, cdt)
        o, lse = o1.to(cdt), lse1.to(cdt)
        for x in sources[n_phase1:]:
            xc = x.to(cdt)
            z = logit(q, xc, eps)[1]
            lse_new = torch.logaddexp(lse, z)
            o = o * torch.exp(lse - lse_new).unsqueeze(-1)
            o.addcmul_(torch.exp(z - lse_new).unsqueeze(-1), xc)
            lse = lse_new
        # A fresh tensor even without merges: autograd must own the Function's output, not a
        # view of the caller's o1.
        out = o.to(v0.dtype, copy=o is o1)
    return DepthAttentionFunction.apply(query, key_norm_weight, eps, (out, lse), None, *sources)


def two_phase_depth_attention(
    query: Tensor,
    sources: list[Tensor],
    key_norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    return_weights: bool = False,
):
    """Softmax over depth of `sources` against one pseudo-query, computed in two phases.

    A single read done the two-phase way: phase 1 over sources[:-1], then the merge of
    sources[-1]. Same math as the single-phase read up to fp summation order.

    Args:
        query: pseudo-query w, [d] (fp32 parameter; fp64 in tests).
        sources: list of n tensors, each [..., d], all of one shape, dtype and device.
        key_norm_weight: key RMSNorm gain g, [d], or None for no gain (g = 1).
        eps: added to the mean square inside the square root of the key RMSNorm.
        return_weights: also return the depth weights.

    Returns:
        h: [..., d] in the sources' dtype (for n = 1, `sources[0]` itself);
        weights (if `return_weights`): [n, ...] in the compute dtype, carrying no gradient.
    """
    check_inputs(query, sources, key_norm_weight)
    v0, n = sources[0], len(sources)
    if n == 1:
        return single_source(v0, return_weights)
    gains = None if key_norm_weight is None else key_norm_weight.unsqueeze(0)
    o1, lse1 = phase1(query.unsqueeze(0), sources[:-1], gains, eps)
    h = merged_depth_attention(query, sources, key_norm_weight, eps, o1[0], lse1[0], n - 1)
    if return_weights:
        return h, depth_weights(query, sources, key_norm_weight, eps)
    return h
