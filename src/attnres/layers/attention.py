"""Causal grouped-query self-attention with rotary positions and an optional KV cache.

The options pretrained Llama / Qwen3 checkpoints need (docs/HF.md#backbone-options): a head
width set apart from d_model / n_heads, biases on the projections, per-head RMSNorm of queries
and keys before the rotation (Qwen3), and Llama 3's frequency-dependent RoPE scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.layers.norm import RMSNorm


def rotary_tables(head_dim: int, positions: torch.Tensor, theta: float,
                  scaling: dict | None = None):
    """cos/sin tables [..., T, head_dim/2] for the absolute positions [..., T]; `scaling`: None or
    Llama 3's {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.float32) / head_dim)
    if scaling is not None:
        inv_freq = llama3_scaled_frequencies(inv_freq, **scaling)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def llama3_scaled_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                              high_freq_factor: float,
                              original_max_position_embeddings: int) -> torch.Tensor:
    """Llama 3's RoPE scaling: wavelengths longer than context / low_freq_factor are stretched
    by `factor`, shorter than context / high_freq_factor kept, and the band between blended."""
    context = original_max_position_embeddings
    wavelength = 2 * math.pi / inv_freq
    stretched = torch.where(wavelength > context / low_freq_factor, inv_freq / factor, inv_freq)
    blend = (context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - blend) * stretched / factor + blend * stretched
    in_band = (wavelength >= context / high_freq_factor) & (wavelength <= context / low_freq_factor)
    return torch.where(in_band, blended, stretched)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., :h/2], x[..., h/2:]) of x [B, H, T, h] (the "half" layout)."""
    # at least fp32 (bf16 activations rotate in fp32); fp64 models stay fp64 so tests can be exact
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


MAX_LOGIT_CHUNK_ELEMS = 1 << 22  # scores held at once by `visible_max_logit` (16 MiB in fp32)


@torch.no_grad()
def visible_max_logit(q: torch.Tensor, k: torch.Tensor, scale: float, start: int = 0,
                      chunk: int | None = None) -> torch.Tensor:
    """Per-head max of the visible scaled logits scale·(q_i · k_j), j ≤ start + i (QK-Clip).

    Recomputes q·kᵀ for a fused kernel that does not return scores, `chunk` queries at a time
    (default: as many as fit in MAX_LOGIT_CHUNK_ELEMS scores), so the [B, H, T, S] matrix never
    exists. Query head h reads key head h // (H / H_kv), as in SDPA's `enable_gqa`.

    Args:
        q: [B, H, T, h] (rotated); k: [B, H_kv, S, h], S ≥ T; query t sits at position start + t.

    Returns:
        [H] in promote_types(q.dtype, fp32); −inf for a head that sees no key.
    """
    B, H, T, hd = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    q = q.to(acc).reshape(B, H_kv, H // H_kv, T, hd)
    kT = k.to(acc).transpose(-1, -2)[:, :, None]                        # [B, H_kv, 1, h, S]
    if chunk is None:
        chunk = max(1, MAX_LOGIT_CHUNK_ELEMS // (B * H * S))
    keys = torch.arange(S, device=q.device)
    best = torch.full((H_kv, H // H_kv), float("-inf"), dtype=acc, device=q.device)
    for t0 in range(0, T, chunk):
        scores = (q[:, :, :, t0:t0 + chunk] @ kT) * scale               # [B, H_kv, g, tc, S]
        q_pos = torch.arange(start + t0, start + t0 + scores.shape[-2], device=q.device)
        scores.masked_fill_(q_pos[:, None] < keys[None, :], float("-inf"))
        best = torch.maximum(best, scores.amax(dim=(0, 3, 4)))
    return best.reshape(H)


def max_logit_slack(dtype: torch.dtype) -> float:
    """Relative margin added to `max_logit_bound`: covers the rounding of the norms and of fp32
    dot products up to head width 10⁴ (≤ h·2⁻²⁴ each) plus one rounding of scores held in
    `dtype` (MLA's bf16 einsum under autocast: ≤ 2⁻⁸)."""
    return 1e-3 + 2 * torch.finfo(dtype).eps


@torch.no_grad()
def max_logit_bound(q_sq: torch.Tensor, k_sq: torch.Tensor, scale: float,
                    slack: float) -> torch.Tensor:
    """Cauchy–Schwarz upper bound of each head's largest scaled logit (docs/OPTIM.md#qk-clip-tracking-cost):
    scale·max_b(max_i ‖q_bi‖ · max_j ‖k_bj‖)·(1 + slack), in O(T·h) instead of O(T·S·h).

    Args:
        q_sq: [B, H, T] squared query norms (fp32+); k_sq: [B, H_k, S] squared key norms,
            H_k dividing H (query head h reads key head h // (H / H_k)); T, S ≥ 1.

    Returns:
        [H] ≥ |scale·q_i·k_j| for every pair (i, j), masked or not, as computed in fp32.
    """
    H, H_k = q_sq.shape[1], k_sq.shape[1]
    q_max = q_sq.amax(dim=2)                                            # [B, H]
    k_max = k_sq.amax(dim=2).repeat_interleave(H // H_k, dim=1)         # [B, H]
    return (q_max * k_max).sqrt().amax(dim=0) * (scale * (1 + slack))


def tracked_max_logit(bound: torch.Tensor | None, tau: float | None, exact,
                      group: int = 1) -> torch.Tensor:
    """The per-head value a layer folds into `max_logit` (docs/OPTIM.md#qk-clip-tracking-cost).

    tau None: `exact(None)`, every head's exact max. Else `bound` [H]: heads whose bound is ≤ τ
    record the bound (no clip can happen, γ = 1 either way); the others, widened to whole
    groups of `group` consecutive heads (GQA: the heads of one key head), `exact(heads)`, the
    exact max of just those heads (a sorted LongTensor; None when it is all of them). One host
    sync.
    """
    if tau is None:
        return exact(None)
    over = (bound > tau).view(-1, group).any(dim=1).repeat_interleave(group).nonzero().flatten()
    if over.numel() == bound.numel():
        return exact(None)
    if over.numel():
        bound = bound.clone()
        bound[over] = exact(over)
    return bound


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far by one attention layer, [B, H_kv, T_seen, h]."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    # left-padded batches (docs/HF.md#generate-and-the-cache): [B, T_seen + T] bool, False at
    # padding, set by the caller before each forward; positions then count only real tokens
    valid: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor):
        if self.keys is not None:
            k = torch.cat([self.keys, k], dim=2)
            v = torch.cat([self.values, v], dim=2)
        self.keys, self.values = k, v
        return k, v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_theta: float = 10000.0,
                 head_dim: int = 0, bias: bool = False, qk_norm_eps: float | None = None,
                 rope_scaling: dict | None = None):
        """head_dim 0 = d_model / n_heads; qk_norm_eps: RMSNorm each query and key head with
        this ε before the rotation (None = no q/k norm)."""
        super().__init__()
        if n_heads % n_kv_heads or (not head_dim and d_model % n_heads):
            raise ValueError(f"attention: d_model {d_model} must divide into n_heads {n_heads} "
                             f"(or head_dim be set), and n_heads into n_kv_heads {n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim or d_model // n_heads
        if self.head_dim % 2:
            raise ValueError(f"attention: head_dim {self.head_dim} must be even for rotary")
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            tags.set_group(lin.weight, tags.MUON)
            if bias:  # start at zero (the model's re-initialisation leaves them), no decay
                nn.init.zeros_(lin.bias)
                tags.keep_init(tags.set_group(lin.bias, tags.ADAMW_NO_DECAY))
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(self.head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, qk_norm_eps)
        # QK-Clip statistics (docs/OPTIM.md#qk-clip): with track_max_logit, training forwards fold the
        # per-head max of the visible scaled logits into max_logit [H] (running max, init −inf).
        # max_logit_tau set: heads whose bound stays ≤ it fold the bound instead, and
        # max_logit_exact turns False (docs/OPTIM.md#qk-clip-tracking-cost).
        self.track_max_logit = False
        self.max_logit_tau: float | None = None
        self.max_logit_exact = True
        self.register_buffer("max_logit", torch.full((n_heads,), float("-inf")),
                             persistent=False)

    def reset_max_logit(self):
        self.max_logit.fill_(float("-inf"))
        self.max_logit_exact = True

    @torch.no_grad()
    def _track_max_logit(self, q: torch.Tensor, k: torch.Tensor, start: int) -> None:
        scale, tau = self.head_dim ** -0.5, self.max_logit_tau
        B, H, _, _ = q.shape
        # the chunk of the all-heads call, so a subset's per-slice matmuls (and values) are the same
        chunk = max(1, MAX_LOGIT_CHUNK_ELEMS // (B * H * k.shape[2]))
        bound = None
        if tau is not None:
            acc = torch.promote_types(q.dtype, torch.float32)
            bound = max_logit_bound(q.to(acc).square().sum(-1), k.to(acc).square().sum(-1),
                                    scale, max_logit_slack(acc))
            self.max_logit_exact = False

        group = self.n_heads // self.n_kv_heads

        def exact(heads):  # whole key-head groups, so each matmul keeps the all-heads shape
            if heads is None:
                return visible_max_logit(q, k, scale, start, chunk)
            return visible_max_logit(q[:, heads], k[:, heads[::group] // group], scale, start, chunk)

        batch_max = tracked_max_logit(bound, tau, exact, group)
        torch.maximum(self.max_logit, batch_max.to(self.max_logit.dtype), out=self.max_logit)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        valid = cache.valid if cache is not None else None
        if valid is not None:  # per-row positions of the real tokens: [B, 1, T, h/2] tables
            positions = (valid.long().cumsum(-1) - 1).clamp_min(0)[:, start:start + T]
            cos, sin = (t[:, None] for t in rotary_tables(self.head_dim, positions,
                                                          self.rope_theta, self.rope_scaling))
        else:
            cos, sin = rotary_tables(self.head_dim, torch.arange(start, start + T, device=x.device),
                                     self.rope_theta, self.rope_scaling)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)
        if self.training and self.track_max_logit:
            self._track_max_logit(q, k, start)
        if valid is not None:  # causal, real keys only; a padding query sees itself (no NaN)
            t_all = k.shape[2]
            q_pos = torch.arange(start, start + T, device=x.device)[:, None]
            k_pos = torch.arange(t_all, device=x.device)[None, :]
            mask = ((q_pos >= k_pos) & valid[:, None, :t_all]) | (q_pos == k_pos)
            mask, causal = mask[:, None], False                             # [B, 1, T, S]
        elif start == 0:
            mask, causal = None, True
        else:  # new queries see the whole cache plus the causal part of their own chunk
            t_all = k.shape[2]
            q_pos = torch.arange(start, start + T, device=x.device)[:, None]
            mask, causal = q_pos >= torch.arange(t_all, device=x.device)[None, :], False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def empty_cache(self) -> KVCache:
        return KVCache()
