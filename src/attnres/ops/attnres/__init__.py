"""The depth-attention read (docs/THEORY.md#the-depth-attention-read): a softmax over earlier
sources against a pseudo-query.

Three implementations with one signature: `naive` (stacked, plain autograd,
the test reference), `recompute` (never stacks; saves the sources by reference and one lse per
token, recomputes in backward; the default) and `two_phase` (docs/THEORY.md#two-phase-computation; same backward).
`inference.py` holds the read the streams use under `no_grad` (docs/THEORY.md#inference): no
autograd Function, no checks, keys computed once per source.
"""

from __future__ import annotations

import torch

from .inference import inference_depth_attention, scaled_query, source_key, stacked_read
from .naive import naive_depth_attention
from .recompute import (DepthAttentionFunction, depth_weights, recompute_depth_attention,
                        source_inv_rms)
from .two_phase import merged_depth_attention, phase1, two_phase_depth_attention

IMPLS = {
    "naive": naive_depth_attention,
    "recompute": recompute_depth_attention,
    "two_phase": two_phase_depth_attention,
}


def depth_attention(
    query: torch.Tensor,
    sources: list[torch.Tensor],
    key_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    return_weights: bool = False,
    impl: str = "recompute",
    rms: list[torch.Tensor | None] | None = None,
):
    """One depth-attention read: h = Σ_i softmax_i(z) · v_i, per token.

    With q~ = w ⊙ g and r_i = (mean_c v_i[c]^2 + eps)^(-1/2), the logit of source i is
    z_i = r_i · (q~ · v_i) = w · RMSNorm_g(v_i): keys are RMS-normalised sources, values the raw
    sources, no temperature and no 1/sqrt(d). Statistics and the weighted sum are computed in
    C = promote_types(float32, sources' dtype); the result is cast once to the sources' dtype.
    A zero query gives exactly uniform weights (single-phase exp(z - m) / l form).

    Args:
        query: pseudo-query w, [d] (an fp32 parameter; fp64 in tests).
        sources: Python list of n >= 1 tensors, each [..., d] (typically [B, T, d]), all of one
            shape, dtype and device. Never stacked by `recompute` and `two_phase`.
        key_norm_weight: key RMSNorm gain g, [d], or None for no gain (g = 1).
        eps: added to the mean square inside the square root (default 1e-6).
        return_weights: also return the depth weights.
        impl: "recompute" (default), "two_phase", or "naive" (the plain reference).
        rms: recompute only: precomputed per-source inverse RMS (`source_inv_rms`), None
            entries computed; the other impls compute their own and ignore it.

    Returns:
        h: [..., d] in the sources' dtype. For n = 1 this is `sources[0]` itself (same object,
            no arithmetic), so query and gain get no gradient.
        weights (only if `return_weights`): [n, ...] in C (fp32, or fp64 for fp64 sources),
            summing to 1 over the first axis; they carry no gradient.

    Raises:
        ValueError: empty source list, mismatched sources, wrong query or gain size, or an
            unknown `impl`.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown depth-attention impl {impl!r}; expected one of {sorted(IMPLS)}")
    if impl == "recompute" and rms is not None:
        return IMPLS[impl](query, sources, key_norm_weight, eps, return_weights, rms)
    return IMPLS[impl](query, sources, key_norm_weight, eps, return_weights)


__all__ = [
    "IMPLS",
    "DepthAttentionFunction",
    "depth_attention",
    "depth_weights",
    "inference_depth_attention",
    "merged_depth_attention",
    "naive_depth_attention",
    "phase1",
    "recompute_depth_attention",
    "scaled_query",
    "source_inv_rms",
    "source_key",
    "stacked_read",
    "two_phase_depth_attention",
]
