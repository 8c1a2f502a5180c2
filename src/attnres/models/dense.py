"""A Llama-style dense decoder whose residual connections are pluggable.

Layer j holds two sublayers: attention (sublayer 2j) and a SwiGLU MLP (sublayer 2j+1), each with
its own RMSNorm PreNorm. How their inputs are formed is the residual strategy's business
(`attnres.layers.residual`): the standard PreNorm residual, Full AttnRes or Block AttnRes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.layers.attention import Attention, KVCache
from attnres.layers.mlp import SwiGLU
from attnres.layers.norm import RMSNorm
from attnres.layers.residual import DepthRecord, Residual


@dataclass
class DenseConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 176
    max_seq_len: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # residual mechanism
    residual: str = "prenorm"        # prenorm | full | block
    block_size: int = 4              # S in sublayers (block only)
    attnres_eps: float = 1e-6
    attnres_impl: str = "recompute"  # recompute | two_phase | naive
    two_phase_group: int = 8

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        for name in ("vocab_size", "d_model", "n_layers", "d_ff", "max_seq_len", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers


# SwiGLU width ≈ 8/3·d rounded up to a multiple of 16 (the usual parameter match to a 4d GELU MLP).
# Depth-heavy on purpose (d / n_layers = 16, 16, 12), since AttnRes is a depth mechanism.
PRESETS = {
    "tiny": dict(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=176, max_seq_len=128),
    "small": dict(d_model=128, n_layers=8, n_heads=4, n_kv_heads=2, d_ff=352, max_seq_len=256),
    "base": dict(d_model=192, n_layers=16, n_heads=6, n_kv_heads=2, d_ff=512, max_seq_len=512),
}


def dense_config(preset: str = "tiny", **overrides) -> DenseConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown dense preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(DenseConfig(**PRESETS[preset]), **overrides)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DenseConfig, residual: Residual, index: int):
        super().__init__()
        self.index = index
        self.res_mixer = residual.make_read(cfg.d_model)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.rope_theta, index)
        self.res_ffn = residual.make_read(cfg.d_model)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, stream, cache: KVCache | None = None) -> None:
        sub = 2 * self.index
        x = stream.read(sub)
        stream.write(sub, self.attn(self.attn_norm(x), cache))
        x = stream.read(sub + 1)
        stream.write(sub + 1, self.mlp(self.ffn_norm(x)))

    def sublayer_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Backbone parameters of the mixer and of the FFN sublayer (AttnRes reads excluded)."""
        mixer = list(self.attn_norm.named_parameters("attn_norm")) + list(self.attn.named_parameters("attn"))
        ffn = list(self.ffn_norm.named_parameters("ffn_norm")) + list(self.mlp.named_parameters("mlp"))
        return [mixer, ffn]


class DenseLM(nn.Module):
    def __init__(self, cfg: DenseConfig):
        super().__init__()
        self.cfg = cfg
        self.residual = Residual(cfg.residual, cfg.block_size, cfg.attnres_eps, cfg.attnres_impl,
                                 cfg.two_phase_group)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.residual, j) for j in range(cfg.n_layers))
        self.final_res = self.residual.make_read(cfg.d_model)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        tags.set_group(self.embed_tokens.weight, tags.ADAMW)
        tags.set_group(self.lm_head.weight, tags.ADAMW)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) everywhere, output projections scaled by 1/sqrt(2·n_layers) (GPT-2).

        Only backbone tensors draw random numbers, in a fixed order, so a seed gives bitwise the
        same backbone whatever the residual kind (spec invariant I13)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if ".res_" in name or name.startswith("final_res"):
                continue  # AttnRes reads keep their zero query and unit gain
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "w2.weight")):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, std)

    def reads(self) -> list:
        return [r for layer in self.layers for r in (layer.res_mixer, layer.res_ffn)] + [self.final_res]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, record: DepthRecord | None = None):
        """idx [B, T] token ids -> logits [B, T, V] (and the mean cross-entropy if targets)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        stream = self.residual.stream(self.embed_tokens(idx), self.reads(), record)
        for layer in self.layers:
            layer(stream, cache)
        h = stream.final()
        logits = self.lm_head(self.norm(h).to(self.lm_head.weight.dtype))
        if cache is not None:
            cache.length += T
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layers)

    def sublayer_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        return [group for layer in self.layers for group in layer.sublayer_parameters()]

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
        return n

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations of idx [B, T]; temperature 0 is greedy."""
        if idx.shape[1] + max_new_tokens > self.cfg.max_seq_len and use_cache:
            raise ValueError(f"prompt ({idx.shape[1]}) + {max_new_tokens} new tokens exceeds "
                             f"max_seq_len {self.cfg.max_seq_len}")
        cache = self.new_cache() if use_cache else None
        logits = self(idx, cache=cache)[:, -1]
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            idx = torch.cat([idx, nxt], dim=1)
            if use_cache:
                logits = self(nxt, cache=cache)[:, -1]
            else:
                logits = self(idx[:, -self.cfg.max_seq_len:])[:, -1]
        return idx


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
