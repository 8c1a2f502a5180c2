"""Depth-attention read with a recomputing backward (docs/THEORY.md#the-recomputing-backward).

The sources are never stacked. The Function saves references to the source tensors (which the
model keeps alive anyway: later reads use them) and per-token scalars only (lse, and when the
forward computed them, each source's inverse RMS r_i and logit z_i), and rebuilds everything else
in backward with passes over the sources that keep only per-token scalars. Nothing of size n·d
is ever saved or allocated besides the gradients it returns.

Saving r and z (2·n scalars per token, 1/d of the sources) spares backward the two passes that
would recompute them; a stream may also hand in each source's r, computed once when the source
was formed, so that the forward of every read that sees it skips its mean of squares. r is a
function of v, and the backward's formula already carries the r path analytically, so a
precomputed r is exact.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .naive import (check_inputs, compute_dtype, folded_query, full_precision, inv_rms, logit,
                    single_source)

Tensor = torch.Tensor


def _logits(q: Tensor, sources: list[Tensor], eps: float) -> Tensor:
    """z [n, ...]: one pass over the sources, keeping one scalar per token and source."""
    return torch.stack([logit(q, v.to(q.dtype), eps)[1] for v in sources])


def _stats(q: Tensor, sources: list[Tensor], eps: float,
           rms: list[Tensor | None] | None) -> tuple[Tensor, Tensor]:
    """(r, z) [n, ...] in q's dtype; r_i taken from `rms` where given (any dtype), else computed."""
    r, z = [], []
    for i, v in enumerate(sources):
        vc = v.to(q.dtype)
        r_i = rms[i] if rms is not None and rms[i] is not None else None
        r_i = inv_rms(vc, eps) if r_i is None else r_i.to(q.dtype)
        r.append(r_i)
        z.append(r_i * (vc @ q))
    return torch.stack(r), torch.stack(z)


def _softmax(z: Tensor) -> tuple[Tensor, Tensor]:
    """(p, lse) over the depth axis 0, with p = exp(z - m) / l: exact for equal logits."""
    m = z.amax(0)
    e = torch.exp(z - m)
    s = e.sum(0)
    return e / s, m + torch.log(s)


def _weighted_sum(p: Tensor, sources: list[Tensor]) -> Tensor:
    """Σ_i p_i v_i in p's dtype; mixed-dtype addcmul_ upcasts each source on the fly."""
    h = p[0].unsqueeze(-1) * sources[0]
    for p_i, v in zip(p[1:], sources[1:]):
        h.addcmul_(p_i.unsqueeze(-1), v)
    return h


@torch.no_grad()
def depth_weights(
    query: Tensor, sources: list[Tensor], key_norm_weight: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """The read's depth weights p [n, ...] in the compute dtype, without gradient (analysis)."""
    cdt = compute_dtype(sources[0].dtype)
    with full_precision(sources[0].device):
        return _softmax(_logits(folded_query(query, key_norm_weight, cdt), sources, eps))[0]


def _backward(ctx, grad_out):
    """docs/THEORY.md#the-recomputing-backward: two passes over the saved sources keeping per-token
    scalars only."""
    query, gain, lse, r, z, *sources = ctx.saved_tensors
    cdt, d = lse.dtype, query.shape[0]
    q = folded_query(query, gain, cdt)
    delta = grad_out.to(cdt)

    # Pass 1: per-token scalars only (a_i = δ·v_i; r_i and z_i too unless the forward saved
    # them), then p_i and D = δ·h.
    if ctx.saved_stats:
        a = torch.stack([torch.linalg.vecdot(v.to(cdt), delta) for v in sources])
    else:
        r, z, a = [], [], []
        for v in sources:
            vc = v.to(cdt)
            r_i, z_i = logit(q, vc, ctx.eps)
            r.append(r_i)
            z.append(z_i)
            a.append(torch.linalg.vecdot(vc, delta))
        r, z, a = torch.stack(r), torch.stack(z), torch.stack(a)  # [n, ...]
    p = torch.exp(z - lse)
    dz = p * (a - (p * a).sum(0))
    c = dz * r  # ∂z_i · r_i: weight of the key path q~ − (z_i r_i / d) v_i
    ck = c * z * r / d

    # Pass 2: ∂v_i = p_i δ + c_i q~ − c_i (z_i r_i / d) v_i, and ∂q~ = Σ_tokens c_i v_i.
    need_q = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
    dq = torch.zeros_like(q) if need_q else None
    grads = []
    for i, v in enumerate(sources):
        vc = v.to(cdt)
        if need_q:
            dq += c[i].reshape(-1) @ vc.reshape(-1, d)
        if not ctx.needs_input_grad[SOURCES_AT + i]:
            grads.append(None)
            continue
        g = delta * p[i].unsqueeze(-1)
        g.addcmul_(c[i].unsqueeze(-1), q)
        g.addcmul_(ck[i].unsqueeze(-1), vc, value=-1)
        grads.append(g.to(v.dtype))

    dw = dg = None
    if ctx.needs_input_grad[0]:
        dw = dq if gain is None else dq * gain.to(cdt)
        dw = dw.to(query.dtype)
    if ctx.needs_input_grad[1]:
        dg = (dq * query.to(cdt)).to(gain.dtype)
    return dw, dg, None, None, None, *grads


SOURCES_AT = 5  # index of the first source among DepthAttentionFunction.apply's arguments


class DepthAttentionFunction(torch.autograd.Function):
    """h = Σ_i softmax_i(z) v_i, saving the sources (by reference), query, gain and per-token
    scalars only.

    apply(query, key_norm_weight, eps, precomputed, rms, *sources). `precomputed` is None, or an
    (output, lse) pair computed elsewhere without autograd (the two-phase read): forward then
    only adopts them, and backward recomputes r and z over the full source list. It travels
    inside a tuple so that autograd does not treat o1 as an input to save or differentiate.
    `rms` is None or a tuple of n per-source inverse RMS r_i [...] (None entries are computed),
    without gradient: a stream computes a completed block's r once for all the reads that see it.
    """

    @staticmethod
    def forward(ctx, query, key_norm_weight, eps, precomputed, rms, *sources):
        cdt = compute_dtype(sources[0].dtype)
        if precomputed is None:
            with full_precision(sources[0].device):
                r, z = _stats(folded_query(query, key_norm_weight, cdt), sources, eps, rms)
                p, lse = _softmax(z)
                out = _weighted_sum(p, sources).to(sources[0].dtype)
        else:
            out, lse = precomputed
            lse, r, z = lse.to(cdt), None, None
        ctx.eps = eps
        ctx.saved_stats = r is not None
        ctx.save_for_backward(query, key_norm_weight, lse, r, z, *sources)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with full_precision(grad_out.device):
            return _backward(ctx, grad_out)


@torch.no_grad()
def source_inv_rms(v: Tensor, eps: float) -> Tensor:
    """r = (mean_c v[c]^2 + eps)^(-1/2) [...] of one source in the compute dtype, without
    gradient: what `recompute_depth_attention(..., rms=...)` takes."""
    with full_precision(v.device):
        return inv_rms(v.to(compute_dtype(v.dtype)), eps)


def recompute_depth_attention(
    query: Tensor,
    sources: list[Tensor],
    key_norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    return_weights: bool = False,
    rms: list[Tensor | None] | None = None,
):
    """Softmax over depth of `sources` against one pseudo-query; recomputing backward.

    Args:
        query: pseudo-query w, [d] (fp32 parameter; fp64 in tests).
        sources: list of n tensors, each [..., d], all of one shape, dtype and device.
        key_norm_weight: key RMSNorm gain g, [d], or None for no gain (g = 1).
        eps: added to the mean square inside the square root of the key RMSNorm.
        return_weights: also return the depth weights.
        rms: optional per-source inverse RMS r_i = (mean_c v_i[c]^2 + eps)^(-1/2) [...], without
            gradient (None entries are computed): `source_inv_rms` of each source, made once by
            a caller whose sources are read many times.

    Returns:
        h: [..., d] in the sources' dtype (for n = 1, `sources[0]` itself);
        weights (if `return_weights`): [n, ...] in the compute dtype, carrying no gradient.
    """
    check_inputs(query, sources, key_norm_weight)
    v0 = sources[0]
    if len(sources) == 1:
        return single_source(v0, return_weights)
    if rms is not None and len(rms) != len(sources):
        raise ValueError(f"rms has {len(rms)} entries for {len(sources)} sources")
    h = DepthAttentionFunction.apply(query, key_norm_weight, eps, None,
                                     None if rms is None else tuple(rms), *sources)
    if return_weights:
        return h, depth_weights(query, sources, key_norm_weight, eps)
    return h
