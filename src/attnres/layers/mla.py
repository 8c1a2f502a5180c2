"""Multi-head Latent Attention without q-LoRA, NoPE by default (docs/BACKBONE.md#mla-without-rope).

Keys and values are expanded per head from a shared, RMS-normalised latent c [r_kv] plus a shared
d_rope-wide key part k_pe, so the cache holds only (c, k_pe) per token. Training and prefill
expand them ("naive"); decoding can instead fold the expansion into the query and the output
("absorbed"), which attends over the latents directly, like MQA with key width r_kv + d_rope.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnres import tags
from attnres.layers.attention import (
    apply_rotary,
    max_logit_bound,
    max_logit_slack,
    rotary_tables,
    tracked_max_logit,
)
from attnres.layers.norm import RMSNorm

DECODE = ("absorbed", "naive")


@dataclass
class MLACache:
    """Normalised latents c [B, T, r_kv] and shared key parts k_pe [B, T, d_rope] seen so far."""

    c: torch.Tensor | None = None
    k_pe: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.c is None else self.c.shape[1]

    def append(self, c: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.c is not None:
            c, k_pe = torch.cat([self.c, c], dim=1), torch.cat([self.k_pe, k_pe], dim=1)
        self.c, self.k_pe = c, k_pe
        return c, k_pe

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.c, self.k_pe) if t is not None)


class MultiHeadLatentAttention(nn.Module):
    """MLA mixer: x [B, T, d] -> [B, T, d], causal.

    Args:
        d_model: model width d.
        n_heads: H.
        d_nope, d_rope: per-head query/key widths of the content part and of the part shared
            with k_pe (rotated only when rope=True).
        d_v: per-head value width.
        kv_lora_rank: latent width r_kv.
        rope: rotate q_pe and k_pe by absolute position (the paper's RoPE comparison arm).
        decode: "absorbed" or "naive", the path used once the cache holds earlier tokens.

    Set `track_max_logit = True` to fold, in training-mode forwards, the per-head max of the
    visible scaled logits into the buffer `max_logit` [H] for QK-Clip (docs/OPTIM.md#qk-clip);
    with `max_logit_tau` set as well, heads whose Cauchy–Schwarz bound stays ≤ it fold the bound
    instead and `max_logit_exact` turns False (docs/OPTIM.md#qk-clip-tracking-cost).
    """

    def __init__(self, d_model: int, n_heads: int, d_nope: int, d_rope: int, d_v: int,
                 kv_lora_rank: int, rope: bool = False, rope_theta: float = 10000.0,
                 norm_eps: float = 1e-6, decode: str = "absorbed"):
        super().__init__()
        if decode not in DECODE:
            raise ValueError(f"mla: decode must be one of {DECODE}, got {decode!r}")
        if rope and d_rope % 2:
            raise ValueError(f"mla: d_rope {d_rope} must be even for rotary")
        self.n_heads, self.d_nope, self.d_rope, self.d_v = n_heads, d_nope, d_rope, d_v
        self.kv_lora_rank = kv_lora_rank
        self.rope, self.rope_theta, self.decode = rope, rope_theta, decode
        # NoPE keeps the d_rope channels in the dot product, so they count in the scale.
        self.scale = (d_nope + d_rope) ** -0.5

        self.q_proj = nn.Linear(d_model, n_heads * (d_nope + d_rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d_model, kv_lora_rank + d_rope, bias=False)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_heads * (d_nope + d_v), bias=False)
        self.o_proj = nn.Linear(n_heads * d_v, d_model, bias=False)
        for lin in (self.q_proj, self.kv_a_proj_with_mqa, self.kv_b_proj, self.o_proj):
            tags.set_group(lin.weight, tags.MUON)

        self.track_max_logit = False
        self.max_logit_tau: float | None = None
        self.max_logit_exact = True
        self.register_buffer("max_logit", torch.full((n_heads,), float("-inf")),
                             persistent=False)

    def empty_cache(self) -> MLACache:
        return MLACache()

    def reset_max_logit(self):
        self.max_logit.fill_(float("-inf"))
        self.max_logit_exact = True

    def forward(self, x: torch.Tensor, cache: MLACache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = cache.length if cache is not None else 0
        q = self.q_proj(x).view(B, T, self.n_heads, -1).transpose(1, 2)    # [B, H, T, dn + dr]
        q_nope, q_pe = q.split([self.d_nope, self.d_rope], dim=-1)
        c, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.d_rope], dim=-1)
        c = self.kv_a_layernorm(c)                                          # [B, T, r_kv]
        if self.rope:
            positions = torch.arange(start, start + T, device=x.device)
            cos, sin = rotary_tables(self.d_rope, positions, self.rope_theta)
            q_pe, k_pe = apply_rotary(q_pe, cos, sin), apply_rotary(k_pe, cos, sin)
        if cache is not None:
            c, k_pe = cache.append(c, k_pe)                                 # [B, S, ...], S ≥ T

        if start > 0 and self.decode == "absorbed":
            o = self._absorbed(q_nope, q_pe, c, k_pe, start)
        else:
            o = self._naive(q_nope, q_pe, c, k_pe, start)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))

    def _naive(self, q_nope, q_pe, c, k_pe, start):
        """Expand per-head keys and values from every visible latent; o [B, H, T, d_v]."""
        B, S, _ = c.shape
        kv = self.kv_b_proj(c).view(B, S, self.n_heads, -1).transpose(1, 2)
        k_nope, v = kv.split([self.d_nope, self.d_v], dim=-1)               # [B, H, S, ...]
        scores = (torch.einsum("bhtn,bhsn->bhts", q_nope, k_nope)
                  + torch.einsum("bhtp,bsp->bhts", q_pe, k_pe))
        bound = self._logit_bound((q_nope, q_pe), _sq(k_nope) + _sq(k_pe)[:, None], scores.dtype)
        p = self._softmax(scores, start, bound).to(v.dtype)
        return p @ v

    def _absorbed(self, q_nope, q_pe, c, k_pe, start):
        """Attend over the latents: W_UK folds into the query, W_UV acts after; o [B, H, T, d_v]."""
        W = self.kv_b_proj.weight.view(self.n_heads, self.d_nope + self.d_v, self.kv_lora_rank)
        W_UK, W_UV = W.split([self.d_nope, self.d_v], dim=1)                # [H, d, r_kv]
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, W_UK)                # [B, H, T, r_kv]
        scores = (torch.einsum("bhtr,bsr->bhts", q_lat, c)
                  + torch.einsum("bhtp,bsp->bhts", q_pe, k_pe))
        bound = self._logit_bound((q_lat, q_pe), (_sq(c) + _sq(k_pe))[:, None], scores.dtype)
        p = self._softmax(scores, start, bound).to(c.dtype)
        o_lat = torch.einsum("bhts,bsr->bhtr", p, c)
        return torch.einsum("bhtr,hvr->bhtv", o_lat, W_UV)

    def _logit_bound(self, q_parts, k_sq: torch.Tensor, scores_dtype) -> torch.Tensor | None:
        """Each head's Cauchy–Schwarz bound on its scaled logits, from the query parts (one
        query is their concatenation) and the keys' squared norms k_sq [B, H or 1, S]; None
        unless this forward tracks with `max_logit_tau` set."""
        if not (self.training and self.track_max_logit and self.max_logit_tau is not None):
            return None
        q_sq = sum(_sq(part) for part in q_parts)                           # [B, H, T]
        return max_logit_bound(q_sq, k_sq, self.scale, max_logit_slack(scores_dtype))

    def _softmax(self, scores: torch.Tensor, start: int,
                 bound: torch.Tensor | None = None) -> torch.Tensor:
        """Scale, mask the future (query t sits at position start + t) and softmax in fp32+.

        Also where the visible logits are folded into `max_logit`: after the scale and the mask,
        so a larger logit at a future position never counts; heads whose `bound` is ≤
        `max_logit_tau` fold the bound instead (`tracked_max_logit`).
        """
        T, S = scores.shape[-2:]
        acc = torch.promote_types(scores.dtype, torch.float32)
        scores = scores.to(acc) * self.scale
        q_pos = torch.arange(start, start + T, device=scores.device)[:, None]
        visible = q_pos >= torch.arange(S, device=scores.device)[None, :]   # [T, S]
        scores = scores.masked_fill(~visible, float("-inf"))
        if self.training and self.track_max_logit:
            with torch.no_grad():
                def exact(heads):
                    return (scores if heads is None else scores[:, heads]).amax(dim=(0, 2, 3))
                batch_max = tracked_max_logit(bound, self.max_logit_tau, exact)
                batch_max = batch_max.to(self.max_logit.dtype)
                self.max_logit_exact &= self.max_logit_tau is None
                torch.maximum(self.max_logit, batch_max, out=self.max_logit)
        return scores.softmax(dim=-1)


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Squared norms over the last dim, in fp32 or wider."""
    return t.to(torch.promote_types(t.dtype, torch.float32)).square().sum(-1)
