"""Kimi Delta Attention layer: projections, short convs, gates and the gated output norm around
the KDA op (docs/BACKBONE.md#kda-parameterisation), with a constant-size cache for decoding
(docs/BACKBONE.md#kda-state-and-decoding)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.layers.norm import RMSNorm
from attnres.ops.kda import chunk_kda, recurrent_kda

MODES = ("auto", "chunk", "recurrent")
RECURRENT_MAX_TOKENS = 64  # auto mode: up to this many new tokens, stepping beats chunking


@dataclass
class KDACache:
    """What one KDA layer carries between calls; its size does not grow with the sequence.

    `state` is the recurrent state [B, H, K, V] (fp32, fp64 for fp64 runs); the conv caches hold
    the last (kernel - 1) pre-conv inputs [B, C, kernel - 1] of q, k and v. None = sequence start.
    """

    state: torch.Tensor | None = None
    q_conv: torch.Tensor | None = None
    k_conv: torch.Tensor | None = None
    v_conv: torch.Tensor | None = None

    def nbytes(self) -> int:
        parts = (self.state, self.q_conv, self.k_conv, self.v_conv)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    # eps inside the square root (released form); F.normalize clamps the norm instead.
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    # softplus(x) = y  <=>  x = y + log(1 - exp(-y)); expm1 keeps it accurate for small y.
    return y + torch.log(-torch.expm1(-y))


class KimiDeltaAttention(nn.Module):
    """KDA mixer: x [B, T, d] -> [B, T, d].

    Args:
        d_model: model width d.
        n_heads: H; each head has d_k = d_v = head_dim.
        head_dim: per-head key and value width.
        conv_size: kernel of the causal depthwise short convs on q, k, v.
        gate_rank: rank of both low-rank gates (decay f_a/f_b and output g_a/g_b); head_dim if None.
        chunk_size: chunk length C of the chunkwise algorithm.
        mode: "auto" (chunk when training or more than 64 new tokens, else recurrent), "chunk"
            or "recurrent".
        norm_eps: epsilon of the head-wise output RMSNorm.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, conv_size: int = 4,
                 gate_rank: int | None = None, chunk_size: int = 16, mode: str = "auto",
                 norm_eps: float = 1e-5):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"kda: mode must be one of {MODES}, got {mode!r}")
        self.n_heads, self.head_dim = n_heads, head_dim
        self.conv_size, self.chunk_size, self.mode = conv_size, chunk_size, mode
        rank = head_dim if gate_rank is None else gate_rank
        width = n_heads * head_dim

        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        # Causality comes from left-padding in `_short_conv`, so the convs themselves pad nothing.
        self.q_conv = nn.Conv1d(width, width, conv_size, groups=width, bias=False)
        self.k_conv = nn.Conv1d(width, width, conv_size, groups=width, bias=False)
        self.v_conv = nn.Conv1d(width, width, conv_size, groups=width, bias=False)
        self.f_a_proj = nn.Linear(d_model, rank, bias=False)
        self.f_b_proj = nn.Linear(rank, width, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.g_a_proj = nn.Linear(d_model, rank, bias=False)
        self.g_b_proj = nn.Linear(rank, width, bias=False)
        self.o_norm = RMSNorm(head_dim, norm_eps)
        self.o_proj = nn.Linear(width, d_model, bias=False)

        # Decay rates spread over a wide range, so heads start with different memory lengths:
        # exp(A_log) in [1, 16] and softplus(dt_bias) = dt log-uniform in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.empty(n_heads).uniform_(1, 16).log())
        dt = torch.empty(width).uniform_(math.log(1e-3), math.log(1e-1)).exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(_inverse_softplus(dt))

        for lin in (self.q_proj, self.k_proj, self.v_proj, self.f_a_proj, self.f_b_proj,
                    self.b_proj, self.g_a_proj, self.g_b_proj, self.o_proj):
            tags.set_group(lin.weight, tags.MUON)
        for conv in (self.q_conv, self.k_conv, self.v_conv):
            tags.keep_init(tags.set_group(conv.weight, tags.ADAMW))
        tags.keep_init(tags.set_group(self.A_log, tags.ADAMW_NO_DECAY))
        tags.keep_init(tags.set_group(self.dt_bias, tags.ADAMW_NO_DECAY))

    def empty_cache(self) -> KDACache:
        return KDACache()

    def _short_conv(self, conv: nn.Conv1d, x: torch.Tensor, past: torch.Tensor | None):
        """Causal depthwise conv + SiLU of x [B, T, C]; returns (y [B, T, C], new past [B, C, W-1]).

        The new inputs are left-padded with the previous W - 1 inputs (zeros at sequence start),
        which also gives the right cache when T < W - 1.
        """
        x = x.transpose(1, 2)                                        # [B, C, T]
        if past is None:
            past = x.new_zeros(*x.shape[:2], self.conv_size - 1)
        x = torch.cat([past.to(x.dtype), x], dim=-1)                 # [B, C, W-1+T]
        y = F.silu(conv(x))                                          # valid conv: T outputs
        # Counted from the front: a slice of -(W-1) would keep everything when W = 1.
        return y.transpose(1, 2), x[..., x.shape[-1] - (self.conv_size - 1):]

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Log-decay g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias) <= 0, [B, T, H, K], fp32+."""
        acc = torch.promote_types(x.dtype, torch.float32)
        raw = self.f_b_proj(self.f_a_proj(x)).to(acc) + self.dt_bias.to(acc)
        raw = raw.unflatten(-1, (self.n_heads, self.head_dim))
        return -self.A_log.to(acc).exp()[:, None] * F.softplus(raw)

    def forward(self, x: torch.Tensor, cache: KDACache | None = None) -> torch.Tensor:
        T = x.shape[1]
        heads = (self.n_heads, self.head_dim)
        c = cache if cache is not None else KDACache()   # a throwaway one keeps a single code path
        q, c.q_conv = self._short_conv(self.q_conv, self.q_proj(x), c.q_conv)
        k, c.k_conv = self._short_conv(self.k_conv, self.k_proj(x), c.k_conv)
        v, c.v_conv = self._short_conv(self.v_conv, self.v_proj(x), c.v_conv)
        # The ops scale q by head_dim^-1/2 themselves, after this normalisation.
        q, k = _l2norm(q.unflatten(-1, heads)), _l2norm(k.unflatten(-1, heads))   # [B, T, H, K]
        v = v.unflatten(-1, heads)                                                   # [B, T, H, V]
        g = self.gate(x)
        beta = torch.sigmoid(self.b_proj(x).to(g.dtype))                     # [B, T, H]

        mode = self.mode
        if mode == "auto":
            mode = "chunk" if self.training or T > RECURRENT_MAX_TOKENS else "recurrent"
        if mode == "chunk":
            o, state = chunk_kda(q, k, v, g, beta, initial_state=c.state,
                                 output_final_state=cache is not None, chunk_size=self.chunk_size)
        else:
            o, state = recurrent_kda(q, k, v, g, beta, initial_state=c.state,
                                     output_final_state=cache is not None)
        c.state = state

        out_gate = torch.sigmoid(self.g_b_proj(self.g_a_proj(x))).unflatten(-1, heads)
        o = self.o_norm(o) * out_gate                                          # [B, T, H, V]
        return self.o_proj(o.flatten(-2))
