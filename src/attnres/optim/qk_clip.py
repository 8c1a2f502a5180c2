"""QK-Clip, the "Clip" of MuonClip (docs/OPTIM.md#qk-clip): cap each attention head's max logit at τ.

After the optimizer step, every attention head h whose largest visible scaled logit S_max over
the step exceeded τ has its query/key weights scaled so that this logit becomes τ:

    γ_h = τ / max(S_max_h, τ)        (= 1 for S_max ≤ τ, including S_max ≤ 0 and −inf)

Per-head rules (the logit scales by exactly γ_h):
- MLA: q_proj[h, :d_nope] *= √γ, q_proj[h, d_nope:] *= γ, kv_b_proj[h, :d_nope] *= √γ; the
  value rows, the shared k_pe / latent path (kv_a_proj_with_mqa, kv_a_layernorm) untouched.
- dense MHA (n_kv_heads == n_heads): q_proj and k_proj rows of head h *= √γ.
- dense GQA (a K head shared by several query heads): q_proj rows of head h *= γ, K untouched.

The layers collect S_max themselves (a `max_logit` [H] buffer filled in training-mode forwards
while `track_max_logit` is set). With `enable_tracking(model, tau=τ)` a head whose Cauchy–Schwarz
bound stays ≤ τ records the bound instead of recomputing q·kᵀ (docs/OPTIM.md#qk-clip-tracking-cost):
γ is 1 either way, so the decisions and weights are those of exact tracking, but the recorded
values are then upper bounds, and the stats say so (`exact`). All layers' buffers are packed into one [n_layers, H] tensor so
one `all_reduce(MAX)` over the data-parallel group serves the whole model: pass it as `reduce`.
Every rank then computes the same γ and runs the same multiplications (unconditionally, γ = 1
for heads below τ, which leaves their weights bitwise unchanged).

The layers are found by duck typing (a `max_logit` buffer and `reset_max_logit`), so this file
does not import `attnres.layers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

Reduce = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass
class QKClipStats:
    """What one QK-Clip application saw and did.

    names: the attention layers' module names, one per row.
    n_heads: each layer's head count (a row's columns beyond it are padding).
    max_logit: [n_layers, H] S_max after `reduce`.
    gamma: [n_layers, H] the factors (1 where not clipped; padding columns are not applied).
    tau: the threshold.
    exact: whether max_logit is every head's exact S_max; False when some layer tracked with a
        bound threshold (its heads at or below τ may hold an upper bound instead).
    """

    names: list[str]
    n_heads: list[int]
    max_logit: torch.Tensor
    gamma: torch.Tensor
    tau: float
    exact: bool = True

    def _real(self) -> torch.Tensor:
        width = self.gamma.shape[1] if self.names else 0
        return torch.arange(width)[None, :] < torch.tensor(self.n_heads)[:, None]

    @property
    def n_clipped(self) -> int:
        return int(((self.gamma < 1) & self._real()).sum()) if self.names else 0

    def layer_max(self) -> list[float]:
        """Max over heads of S_max, per layer (−inf for a layer that saw no forward)."""
        if not self.names:
            return []
        return self.max_logit.masked_fill(~self._real(), float("-inf")).amax(dim=1).tolist()

    def global_max(self) -> float:
        return max(self.layer_max(), default=float("-inf"))

    def to_record(self) -> dict[str, object]:
        """The per-step log fields of docs/OPTIM.md#qk-clip: per-layer max, clipped heads, global
        max; named `max_logit_bound`, `max_logit_bound_max` when not exact."""
        layer_max = self.layer_max()
        name = "max_logit" if self.exact else "max_logit_bound"
        return {name: layer_max, f"{name}_max": max(layer_max, default=float("-inf")),
                "qk_clipped": self.n_clipped}


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention layer that keeps a `max_logit` buffer (dense Attention,
    MLA), in `named_modules` order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "max_logit", None), torch.Tensor)
            and callable(getattr(m, "reset_max_logit", None))]


def enable_tracking(model: nn.Module, on: bool = True, tau: float | None = None) -> int:
    """Set `track_max_logit` on every attention layer; returns how many there are.

    tau None: exact maxima. Else QK-Clip's τ: heads whose bound is ≤ τ record the bound (same
    decisions, less work; docs/OPTIM.md#qk-clip-tracking-cost)."""
    layers = attention_layers(model)
    for _, m in layers:
        m.track_max_logit, m.max_logit_tau = on, tau
    return len(layers)


def reset_max_logits(model: nn.Module) -> None:
    for _, m in attention_layers(model):
        m.reset_max_logit()


def collect_max_logits(model: nn.Module, reduce: Reduce | None = None) -> torch.Tensor:
    """The layers' `max_logit` buffers packed into one fp32 [n_layers, H] tensor, reduced.

    Rows of layers with fewer heads than the widest are padded with −inf (again after the
    reduction, whatever it did to them). `reduce` (e.g.
    `lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX)`) gets the packed tensor once; it may
    work in place and return None, or return the reduced tensor.
    """
    buffers = [m.max_logit for _, m in attention_layers(model)]
    if not buffers:
        return torch.empty(0, 0)
    width = max(b.numel() for b in buffers)
    packed = torch.full((len(buffers), width), float("-inf"), dtype=torch.float32,
                        device=buffers[0].device)
    for row, b in zip(packed, buffers):
        row[:b.numel()] = b.detach().float()
    if reduce is not None:
        out = reduce(packed)
        if out is not None:
            packed = out
        for row, b in zip(packed, buffers):
            row[b.numel():] = float("-inf")
    return packed


def qk_clip_gamma(max_logit: torch.Tensor, tau: float) -> torch.Tensor:
    """γ = τ / max(S_max, τ), branch-free; 1 for every S_max ≤ τ (−inf included).

    Raises:
        ValueError: a NaN or +inf S_max (the step produced non-finite logits), or τ ≤ 0.
    """
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"qk-clip: tau must be a finite number > 0, got {tau}")
    bad = torch.isnan(max_logit) | torch.isposinf(max_logit)
    if bool(bad.any()):
        where = [tuple(i) for i in bad.nonzero().tolist()]
        raise ValueError(f"qk-clip: non-finite max logit at (layer, head) {where[:8]}; "
                         f"the attention logits overflowed")
    # Tensor / tensor: a Python scalar over a tensor is computed as scalar · (1 / tensor), which
    # rounds τ/τ to 1 − 2⁻²⁴ and would shrink heads that sit exactly at τ.
    s_max = max_logit.clamp_min(tau)
    return torch.full_like(s_max, tau) / s_max


@torch.no_grad()
def scale_heads_(layer: nn.Module, gamma: torch.Tensor) -> None:
    """Multiply `layer`'s query/key weights so head h's logits scale by gamma[h] (rules above)."""
    H = layer.n_heads
    if gamma.shape != (H,):
        raise ValueError(f"qk-clip: {H} heads but {tuple(gamma.shape)} factors")
    if hasattr(layer, "kv_b_proj"):                          # MLA
        wq, wkv = layer.q_proj.weight, layer.kv_b_proj.weight
        g = gamma.to(device=wq.device, dtype=wq.dtype)
        root = g.sqrt()[:, None, None]
        q = wq.view(H, layer.d_nope + layer.d_rope, -1)
        q[:, :layer.d_nope].mul_(root)
        q[:, layer.d_nope:].mul_(g[:, None, None])
        wkv.view(H, layer.d_nope + layer.d_v, -1)[:, :layer.d_nope].mul_(root.to(wkv.dtype))
    elif hasattr(layer, "k_proj"):                           # dense MHA / GQA
        wq, wk = layer.q_proj.weight, layer.k_proj.weight
        g = gamma.to(device=wq.device, dtype=wq.dtype)
        if layer.n_kv_heads == H:                            # MHA: split √γ · √γ
            root = g.sqrt()[:, None, None]
            wq.view(H, layer.head_dim, -1).mul_(root)
            wk.view(H, layer.head_dim, -1).mul_(root.to(wk.dtype))
        else:                                                # GQA: all of γ on the query rows
            wq.view(H, layer.head_dim, -1).mul_(g[:, None, None])
    else:
        raise TypeError(f"qk-clip: no rule for {type(layer).__name__}")


def apply_qk_clip(model: nn.Module, tau: float, reduce: Reduce | None = None) -> QKClipStats:
    """Collect (and `reduce`) the max logits, scale every attention layer's heads by γ, reset.

    Call after `optimizer.step()`. Momentum buffers are not touched. Raises (see
    `qk_clip_gamma`) before any weight changes if a max logit is NaN or +inf.
    """
    layers = attention_layers(model)
    max_logit = collect_max_logits(model, reduce)
    gamma = qk_clip_gamma(max_logit, tau)
    exact = all(getattr(m, "max_logit_exact", True) for _, m in layers)
    for row, (_, m) in zip(gamma, layers):
        scale_heads_(m, row[:m.n_heads])
        m.reset_max_logit()
    return QKClipStats(names=[n for n, _ in layers], n_heads=[m.n_heads for _, m in layers],
                       max_logit=max_logit.cpu(), gamma=gamma.cpu(), tau=float(tau), exact=exact)
