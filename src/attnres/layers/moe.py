"""Mixture-of-experts FFN (docs/BACKBONE.md#moe-ffn): sigmoid router with a selection-only bias,
renormalised top-k weights scaled by ρ, 3-D routed SwiGLU experts, one shared SwiGLU expert.

Per token x (router in fp32):

    s   = sigmoid(x · W_rᵀ)                    # [E]
    sel = top-k over (s + b)                   # b: persistent fp32 buffer, selection only
    ŵ_e = ρ · s_e / Σ_{e' ∈ sel} s_{e'}        # gradients reach W_r here, never through b
    y   = Σ_{e ∈ sel} ŵ_e · Expert_e(x) + Shared(x)

Aux-loss-free balancing: training-mode forwards add the (token, slot) assignments per expert to
`counts`; after each optimizer step `update_bias()` (or `update_all_biases(model)`) moves b by
b_e ← b_e + u·(sign(c̄ − c_e) − mean_e sign(c̄ − c_e)) and resets the counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.layers.mlp import SwiGLU
from attnres.ops.moe import moe_dispatch

ROUTED_SCALE = 2.446  # ρ of the released Kimi-Linear-48B-A3B config


class MoE(nn.Module):
    """Routed + shared SwiGLU experts on [..., d] activations.

    Args:
        d_model: d.
        n_experts: E routed experts.
        top_k: k experts per token; k >= 2 (with k = 1 renormalisation makes ŵ ≡ ρ, so the
            router would get no gradient).
        d_expert: d_e, the width of one routed expert.
        n_shared: shared experts, fused into one SwiGLU of width n_shared·d_e (0: none).
        routed_scale: ρ.
        bias_update_rate: u of the balancing rule (0 freezes the bias).
        aux_loss_coef: α of the optional sequence-wise balance loss (0: off). When on, each
            training forward sets `self.aux_loss` (a scalar tensor) for the model to add.
        impl: routed-expert dispatch, "sorted" or "naive" (`attnres.ops.moe`).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        d_expert: int,
        n_shared: int = 1,
        routed_scale: float = ROUTED_SCALE,
        bias_update_rate: float = 1e-3,
        aux_loss_coef: float = 0.0,
        impl: str = "sorted",
    ):
        super().__init__()
        if top_k < 2:
            raise ValueError(f"MoE top_k must be >= 2 (with k = 1 the renormalised weight is the "
                             f"constant routed_scale and the router gets no gradient), got {top_k}")
        if top_k > n_experts:
            raise ValueError(f"MoE top_k ({top_k}) exceeds n_experts ({n_experts})")
        if n_shared < 0 or bias_update_rate < 0 or aux_loss_coef < 0:
            raise ValueError("MoE n_shared, bias_update_rate and aux_loss_coef must be >= 0")
        self.d_model, self.n_experts, self.top_k, self.d_expert = d_model, n_experts, top_k, d_expert
        self.n_shared, self.routed_scale = n_shared, routed_scale
        self.bias_update_rate, self.aux_loss_coef, self.impl = bias_update_rate, aux_loss_coef, impl

        self.gate = nn.Linear(d_model, n_experts, bias=False)                     # W_r [E, d]
        tags.set_group(self.gate.weight, tags.MUON)
        self.w1 = tags.set_group(nn.Parameter(torch.empty(n_experts, d_expert, d_model)), tags.MUON)
        self.w3 = tags.set_group(nn.Parameter(torch.empty(n_experts, d_expert, d_model)), tags.MUON)
        self.w2 = tags.set_group(nn.Parameter(torch.empty(n_experts, d_model, d_expert)), tags.MUON)
        self.shared = SwiGLU(d_model, n_shared * d_expert) if n_shared else None
        # Selection bias: state (saved, loaded), never a Parameter; only update_bias() changes it.
        self.register_buffer("bias", torch.zeros(n_experts, dtype=torch.float32))
        # Assignments per expert since the last update_bias(); int64, so exact at any batch size.
        self.register_buffer("counts", torch.zeros(n_experts, dtype=torch.int64), persistent=False)
        self.aux_loss: torch.Tensor | float = 0.0
        self.last_load: dict | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, out_std: float | None = None) -> None:
        """N(0, std) for the router and all experts; `out_std` (default std) for the w2s."""
        out_std = std if out_std is None else out_std
        for p in (self.gate.weight, self.w1, self.w3):
            p.normal_(0.0, std)
        self.w2.normal_(0.0, out_std)
        if self.shared is not None:
            for lin in (self.shared.w1, self.shared.w3):
                lin.weight.normal_(0.0, std)
            self.shared.w2.weight.normal_(0.0, out_std)

    # ---------------------------------------------------------------- routing

    def route(self, x: torch.Tensor):
        """Router on flat tokens x [N, d], in C = promote_types(fp32, x.dtype) whatever the
        autocast state (fp32 for fp32 and bf16 activations, fp64 in tests).

        Returns:
            expert_ids: [N, k] int64, top-k of s + b (no gradient).
            weights: [N, k] in C, ρ · s_e / Σ_sel s (differentiable w.r.t. x and W_r).
            scores: [N, E] in C, the sigmoid scores s.
        """
        dtype = torch.promote_types(torch.float32, x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.to(dtype), self.gate.weight.to(dtype))        # [N, E]
        scores = torch.sigmoid(logits)
        expert_ids = torch.topk(scores.detach() + self.bias.to(dtype), self.top_k, dim=-1).indices
        s_sel = scores.gather(-1, expert_ids)                                 # [N, k]
        weights = self.routed_scale * s_sel / s_sel.sum(-1, keepdim=True).clamp_min(1e-20)
        return expert_ids, weights, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d] -> y [..., d]; a 3-D x is [B, T, d] (sequences for the aux loss)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])                                       # [N, d]
        expert_ids, weights, scores = self.route(flat)
        y = moe_dispatch(flat, self.w1, self.w3, self.w2, expert_ids, weights, impl=self.impl)
        if self.shared is not None:
            y = y + self.shared(flat)
        if self.training:
            with torch.no_grad():
                self.counts += torch.bincount(expert_ids.reshape(-1), minlength=self.n_experts)
        if self.training and self.aux_loss_coef > 0:
            T = shape[-2] if len(shape) >= 3 else flat.shape[0]
            self.aux_loss = self._sequence_aux_loss(scores.view(-1, T, self.n_experts),
                                                    expert_ids.view(-1, T, self.top_k))
        else:
            self.aux_loss = 0.0
        return y.reshape(shape)

    def _sequence_aux_loss(self, scores: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """DeepSeek-V3 sequence-wise balance loss α·Σ_e f_e·P_e, averaged over sequences.

        scores [B, T, E], expert_ids [B, T, k]; f_e = E/(k·T) · #tokens of the sequence routed to e
        (no gradient), P_e = mean_t s_{t,e} / Σ_{e'} s_{t,e'}. Balanced routing gives α.
        """
        B, T, E = scores.shape
        hits = torch.zeros(B, E, device=scores.device).scatter_add_(
            1, expert_ids.reshape(B, -1), torch.ones(B, T * self.top_k, device=scores.device))
        f = hits * (E / (self.top_k * T))                                     # [B, E]
        P = (scores / scores.sum(-1, keepdim=True)).mean(1)                   # [B, E]
        return self.aux_loss_coef * (f * P).sum(-1).mean()

    # ---------------------------------------------------------------- balancing

    def load_stats(self) -> dict:
        """Load since the last update: MaxVio = max_e c_e/c̄ − 1, dead experts (c_e = 0), counts.

        With no assignments counted yet, max_vio is 0.0 and every expert is dead.
        """
        counts = self.counts.tolist()
        mean = sum(counts) / len(counts)
        max_vio = max(counts) / mean - 1.0 if mean > 0 else 0.0
        return dict(max_vio=max_vio, dead=sum(c == 0 for c in counts), counts=counts)

    @torch.no_grad()
    def update_bias(self) -> dict:
        """b_e ← b_e + u·(sign(c̄ − c_e) − mean_e sign(c̄ − c_e)); reset the counts.

        Call once after each optimizer step, with `counts` already summed over micro-batches
        and data-parallel ranks (`update_all_biases` takes the reduction). Returns the load
        statistics of the counts it used, also kept in `last_load`.
        """
        self.last_load = self.load_stats()
        if self.bias_update_rate > 0:
            c = self.counts.float()
            sign = torch.sign(c.mean() - c)
            self.bias.add_(sign - sign.mean(), alpha=self.bias_update_rate)
        self.counts.zero_()
        return self.last_load

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"d_expert={self.d_expert}, n_shared={self.n_shared}, "
                f"routed_scale={self.routed_scale}, bias_update_rate={self.bias_update_rate}")


def moe_layers(model: nn.Module) -> list[MoE]:
    """Every MoE module of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


@torch.no_grad()
def update_all_biases(model: nn.Module, reduce=None) -> dict[str, dict]:
    """`update_bias()` on every MoE layer of `model`; returns {module name: load stats}.

    `reduce`, if given, sums a tensor in place over data-parallel ranks (for example
    `lambda t: dist.all_reduce(t)`); it is called once, on all layers' counts concatenated, before
    any update, so every rank applies the same bias change.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, MoE)]
    if reduce is not None and named:
        flat = torch.cat([m.counts for _, m in named])                        # [Σ_layers E]
        reduce(flat)
        for (_, m), c in zip(named, flat.split([m.n_experts for _, m in named])):
            m.counts.copy_(c)
    return {n: m.update_bias() for n, m in named}
