"""Reference depth-attention read (docs/THEORY.md#the-depth-attention-read): the sources stacked,
plain autograd.

This file is docs/THEORY.md#the-depth-attention-read in code. The fast paths (`recompute.py`,
`two_phase.py`) reuse its input check and its per-source logit so that the math is written once;
they never stack the sources.
"""

from __future__ import annotations

import contextlib

import torch

Tensor = torch.Tensor


def check_inputs(query: Tensor, sources, key_norm_weight: Tensor | None) -> None:
    """Raise a one-line ValueError for any malformed read; shared by every implementation."""
    if not isinstance(sources, (list, tuple)) or len(sources) == 0:
        raise ValueError("depth attention needs a non-empty list of source tensors")
    if not all(isinstance(v, Tensor) for v in sources):
        raise ValueError("every source must be a torch.Tensor")
    v0 = sources[0]
    for i, v in enumerate(sources[1:], start=1):
        if v.shape != v0.shape or v.dtype != v0.dtype or v.device != v0.device:
            raise ValueError(
                f"source {i} is {tuple(v.shape)} {v.dtype} on {v.device}, "
                f"source 0 is {tuple(v0.shape)} {v0.dtype} on {v0.device}; all must match"
            )
    if v0.dim() < 1 or not v0.is_floating_point():
        raise ValueError(f"sources must be floating-point [..., d], got {tuple(v0.shape)} {v0.dtype}")
    if query.dim() != 1 or query.shape[0] != v0.shape[-1]:
        raise ValueError(f"query must be [d] = [{v0.shape[-1]}], got {tuple(query.shape)}")
    if query.device != v0.device:
        raise ValueError(f"query is on {query.device}, sources are on {v0.device}")
    if key_norm_weight is not None:
        if key_norm_weight.shape != query.shape:
            raise ValueError(
                f"key_norm_weight must be [d] = [{query.shape[0]}], got {tuple(key_norm_weight.shape)}"
            )
        if key_norm_weight.device != v0.device:
            raise ValueError(f"key_norm_weight is on {key_norm_weight.device}, sources are on {v0.device}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 sources, fp64 for fp64 sources (so gradcheck applies)."""
    return torch.promote_types(torch.float32, dtype)


def full_precision(device: torch.device):
    """Autocast off: it would run the logit matmuls in bf16, and docs/THEORY.md#numerics keeps r, z
    and the weighted sum in the compute dtype whatever the surrounding mixed-precision policy."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def folded_query(query: Tensor, key_norm_weight: Tensor | None, dtype: torch.dtype) -> Tensor:
    """q~ = w ⊙ g: the key-norm gain moves onto the query, so normalised keys never exist."""
    q = query.to(dtype)
    return q if key_norm_weight is None else q * key_norm_weight.to(dtype)


def inv_rms(v: Tensor, eps: float) -> Tensor:
    """r = (mean_c v[c]^2 + eps)^(-1/2) over the last dim; `v` already in the compute dtype."""
    return torch.rsqrt(v.square().mean(-1) + eps)


def logit(q: Tensor, v: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(r, z) with z = r · (q~ · v): the logit of source(s) `v` [..., d] against q~ [d]."""
    r = inv_rms(v, eps)
    return r, r * (v @ q)


def single_source(v0: Tensor, return_weights: bool):
    """docs/THEORY.md#single-source: a single source is returned itself, bitwise, so query and gain
    get no gradient."""
    if return_weights:
        return v0, torch.ones((1, *v0.shape[:-1]), dtype=compute_dtype(v0.dtype), device=v0.device)
    return v0


def naive_depth_attention(
    query: Tensor,
    sources: list[Tensor],
    key_norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    return_weights: bool = False,
):
    """Softmax over depth of `sources` against one pseudo-query; plain autograd reference.

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
    cdt = compute_dtype(v0.dtype)
    if len(sources) == 1:
        return single_source(v0, return_weights)
    with full_precision(v0.device):
        V = torch.stack(sources).to(cdt)  # [n, ..., d]
        _, z = logit(folded_query(query, key_norm_weight, cdt), V, eps)  # [n, ...]
        # The max is only a shift that cancels in the softmax; detaching it keeps its (zero)
        # gradient out of the graph.
        e = torch.exp(z - z.amax(0, keepdim=True).detach())
        p = e / e.sum(0, keepdim=True)  # exp(z - m) / l: exactly uniform for equal logits
        h = (p.unsqueeze(-1) * V).sum(0).to(v0.dtype)
    return (h, p.detach()) if return_weights else h
