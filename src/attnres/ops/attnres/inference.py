"""Depth-attention reads for inference (docs/THEORY.md#inference): no autograd Function, no
input checks, one pass over the stacked sources.

Under `no_grad` nothing is saved for a backward, so the memory argument that keeps the training
reads from stacking (docs/THEORY.md#the-recomputing-backward) does not apply, and a decoding step
has a handful of [B, 1, d] sources whose cost is the number of kernel launches, not bytes. A
read here is two stacks, a product and sum for the logits, a softmax, and a product and sum
for the weighted sum, whatever n.

The keys are split from the read so that a stream can compute each source's normalised key once,
when the source is formed, instead of once per read that sees it (`source_key`); the key-norm
gain moves onto the query as in the training reads (`folded_query`). Same math as
`naive_depth_attention`, the reference the tests hold it to; only the summation order differs.
"""

from __future__ import annotations

import torch

from .naive import compute_dtype, folded_query, full_precision

Tensor = torch.Tensor


def root_d_eps(v: Tensor, eps: float) -> Tensor:
    """sqrt(d · eps) as a 0-dim tensor of v's dtype and device, made once per (d, eps, dtype,
    device): a Python scalar in an op costs a tensor conversion per call."""
    key = (v.shape[-1], eps, v.dtype, v.device)
    t = _ROOT_D_EPS.get(key)
    if t is None:
        t = _ROOT_D_EPS[key] = torch.tensor((v.shape[-1] * eps) ** 0.5, dtype=v.dtype, device=v.device)
    return t


_ROOT_D_EPS: dict = {}


def source_key(v: Tensor, eps: float, root: Tensor | None = None) -> Tensor:
    """The key of source v [..., d] that every read of v shares: RMSNorm(v) / sqrt(d), without
    gain, in v's dtype (the caller keeps sources in the compute dtype).

    v · (mean_c v[c]^2 + eps)^(-1/2) / sqrt(d) = v / sqrt(‖v‖² + d·eps) = v / hypot(‖v‖, sqrt(d·eps)):
    three kernels (norm, hypot, divide) where the mean-square form takes six. The 1/sqrt(d)
    goes back onto the query (`scaled_query`), so k · (sqrt(d) q~) is the logit z. `root` is
    `root_d_eps(v, eps)`, which a caller making many keys looks up once."""
    root = root_d_eps(v, eps) if root is None else root
    return v / torch.hypot(torch.linalg.vector_norm(v, dim=-1, keepdim=True), root)


def scaled_query(q: Tensor) -> Tensor:
    """sqrt(d) · q~ for folded queries q~ [..., d]: the factor `source_key` leaves out."""
    return q * q.shape[-1] ** 0.5


def stacked_read(q: Tensor, keys: list[Tensor], values: list[Tensor]) -> Tensor:
    """h = Σ_i softmax_i(k_i · q) v_i with the sources stacked once, no checks, no autograd.

    Args:
        q: `scaled_query` of the folded query q~ = w ⊙ g, [d], in the sources' dtype.
        keys: the n keys (`source_key` of each value), each [..., d].
        values: the n sources, each [..., d], one shape and dtype (the compute dtype).

    Returns:
        h [..., d]; for n = 1 `values[0]` itself (docs/THEORY.md#single-source).
    """
    if len(values) == 1:
        return values[0]
    # Element-wise products and sums, not matmuls or a fused attention call: at one token a
    # batched matmul dispatches three times the kernels of the arithmetic it does, and the
    # fused call measured no faster in a decoding model (docs/BENCHMARKS.md#decode-residual-arms).
    p = torch.softmax((torch.stack(keys, -2) * q).sum(-1, keepdim=True), -2)  # [..., n, 1]
    return (p * torch.stack(values, -2)).sum(-2)  # softmax exp(z - m) / l: 1/n for equal z


@torch.no_grad()
def inference_depth_attention(query: Tensor, sources: list[Tensor],
                              key_norm_weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """One read the inference way, from raw sources: keys, folded query, `stacked_read`.

    Same arguments and result as `naive_depth_attention` without `return_weights`; the result
    carries no gradient. Statistics in C = promote_types(float32, sources' dtype), the result cast
    once to the sources' dtype. The streams call `source_key` and `stacked_read` directly."""
    v0 = sources[0]
    if len(sources) == 1:
        return v0
    cdt = compute_dtype(v0.dtype)
    with full_precision(v0.device):
        vals = [v.to(cdt) for v in sources]
        keys = [source_key(v, eps) for v in vals]
        q = scaled_query(folded_query(query, key_norm_weight, cdt))
        return stacked_read(q, keys, vals).to(v0.dtype)
