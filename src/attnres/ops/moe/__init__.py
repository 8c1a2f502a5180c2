"""Routed-expert dispatch for the MoE FFN (docs/BACKBONE.md#moe-ffn).

Two implementations with one signature: `naive` (every expert on every token, masked; the test
reference) and `sorted` (assignments sorted by expert, one matmul chain per expert, scattered
back with `index_add_`; the default, pure PyTorch, any device).
"""

from __future__ import annotations

import torch

from .dispatch import sort_by_expert, sorted_moe
from .naive import naive_moe

IMPLS = {"naive": naive_moe, "sorted": sorted_moe, "auto": sorted_moe}


def moe_dispatch(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    expert_ids: torch.Tensor,
    weights: torch.Tensor,
    impl: str = "sorted",
) -> torch.Tensor:
    """Routed SwiGLU experts, y_n = Σ_j weights[n, j] · Expert_{expert_ids[n, j]}(x_n), where
    Expert_e(x) = W2_e · (SiLU(W1_e x) ⊙ W3_e x).

    Args:
        x: tokens, [N, d].
        w1, w3: [E, d_e, d]; w2: [E, d, d_e].
        expert_ids: [N, k] int64 in [0, E).
        weights: [N, k] routing weights.
        impl: "sorted" (default; "auto" is the same) or "naive".

    Returns:
        y: [N, d] in x's dtype.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown MoE dispatch impl {impl!r}; expected one of {sorted(IMPLS)}")
    return IMPLS[impl](x, w1, w3, w2, expert_ids, weights)


__all__ = ["IMPLS", "moe_dispatch", "naive_moe", "sort_by_expert", "sorted_moe"]
