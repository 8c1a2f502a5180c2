"""Depth-attention read with a recomputing backward (docs/THEORY.md#the-recomputing-backward).

The sources are never stacked. The Function saves references to the source tensors (which the
model keeps alive anyway: later reads use them) and one lse scalar per token, and rebuilds
everything else in backward with two passes over the sources that keep only per-token scalars.
Nothing of size n·d is ever saved or allocated besides the gradients it returns.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .naive import check_inputs, compute_dtype, folded_query, full_precision, logit, single_source

Tensor = torch.Tensor


def _logits(q: Tensor, sources: list[Tensor], eps: float) -> Tensor:
    """z [n, ...]: one pass over the sources, keeping one scalar per token and source."""
    return torch.stack([logit(q, v.to(q.dtype), eps)[1] for v in sources])


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
    query, gain, lse, *sources = ctx.saved_tensors
    cdt, d = lse.dtype, query.shape[0]
    q = folded_query(query, gain, cdt)
    delta = grad_out.to(cdt)

    # Pass 1: per-token scalars only (r_i, z_i, a_i = δ·v_i), then p_i and D = δ·h.
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
        if not ctx.needs_input_grad[4 + i]:
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
    return dw, dg, None, None, *grads


class DepthAttentionFunction(torch.autograd.Function):
    """h = Σ_i softmax_i(z) v_i, saving only the sources (by reference), query, gain and lse.

    apply(query, key_norm_weight, eps, precomputed, *sources). `precomputed` is None, or an
    (output, lse) pair computed elsewhere without autograd (the two-phase read): forward then
    only adopts them, and backward recomputes over the full source list as usual. It travels
    inside a tuple so that autograd does not treat o1 as an input to save or differentiate.
    """

    @staticmethod
    def forward(ctx, query, key_norm_weight, eps, precomputed, *sources):
        cdt = compute_dtype(sources[0].dtype)
        if precomputed is None:
            with full_precision(sources[0].device):
                p, lse = _softmax(_logits(folded_query(query, key_norm_weight, cdt), sources, eps))
                out = _weighted_sum(p, sources).to(sources[0].dtype)
        else:
            out, lse = precomputed
            lse = lse.to(cdt)
        ctx.eps = eps
        ctx.save_for_backward(query, key_norm_weight, lse, *sources)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with full_precision(grad_out.device):
            return _backward(ctx, grad_out)


def recompute_depth_attention(
    query: Tensor,
    sources: list[Tensor],
    key_norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    return_weights: bool = False,
):
    """Softmax over depth of `sources` against one pseudo-query; recomputing backward.

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
    v0 = sources[0]
    if len(sources) == 1:
        return single_source(v0, return_weights)
    h = DepthAttentionFunction.apply(query, key_norm_weight, eps, None, *sources)
    if return_weights:
        return h, depth_weights(query, sources, key_norm_weight, eps)
    return h
