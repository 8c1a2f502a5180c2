"""Dense MoE reference: every expert runs on every token; a [N, E] combine matrix masks and weights.

The definition in code (docs/BACKBONE.md#moe-ffn): y_n = Σ_j w_{n,j} · Expert_{e_{n,j}}(x_n), with
Expert_e(x) = W2_e · (SiLU(W1_e x) ⊙ W3_e x). It costs E/k times the routed FLOPs: tests only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_moe(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts, y_n = Σ_j weights[n, j] · Expert_{expert_ids[n, j]}(x_n).

    Args:
        x: tokens, [N, d].
        w1, w3: expert input projections, [E, d_e, d].
        w2: expert output projections, [E, d, d_e].
        expert_ids: [N, k] int64 in [0, E); a token may list an expert twice (both slots count).
        weights: [N, k] routing weights (fp32 from the router).

    Returns:
        y: [N, d] in x's dtype. The weighted sum runs in C = promote_types(x.dtype, weights.dtype).
    """
    N, E = x.shape[0], w1.shape[0]
    acc = torch.promote_types(x.dtype, weights.dtype)
    # combine[n, e] = Σ_j weights[n, j] · [expert_ids[n, j] = e]; zero for experts not chosen
    combine = torch.zeros(N, E, dtype=acc, device=x.device).scatter_add(1, expert_ids, weights.to(acc))
    y = torch.zeros(N, x.shape[1], dtype=acc, device=x.device)
    for e in range(E):
        h = F.silu(F.linear(x, w1[e])) * F.linear(x, w3[e])      # [N, d_e]
        y = y + combine[:, e, None] * F.linear(h, w2[e]).to(acc)  # [N, d]
    return y.to(x.dtype)
