"""A Llama-style dense decoder: GQA attention with RoPE and a SwiGLU MLP in every layer.

Layer j holds two sublayers, attention (sublayer 2j) and the MLP (sublayer 2j+1), each with its
own RMSNorm PreNorm; `residual` picks how their inputs are formed (see `models/decoder.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from attnres.layers.attention import Attention
from attnres.layers.mlp import SwiGLU
from attnres.models.decoder import DecoderConfig, DecoderLM


@dataclass
class DenseConfig(DecoderConfig):
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 176
    rope_theta: float = 10000.0
    # options of pretrained checkpoints (docs/HF.md#backbone-options); the defaults are ours
    head_dim: int = 0                # 0 = d_model / n_heads
    attn_bias: bool = False          # biases on q, k, v and o (Llama's attention_bias)
    qk_norm: bool = False            # per-head RMSNorm of queries and keys (Qwen3)
    rope_scaling: dict | None = None  # Llama 3's RoPE scaling (layers/attention.py)

    def __post_init__(self):
        super().__post_init__()
        if not self.head_dim and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.d_ff < 1:
            raise ValueError(f"d_ff must be >= 1, got {self.d_ff}")


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


class DenseLM(DecoderLM):
    def __init__(self, cfg: DenseConfig):
        super().__init__(cfg)

    def build_mixer(self, j: int) -> Attention:
        c = self.cfg
        return Attention(c.d_model, c.n_heads, c.n_kv_heads, c.rope_theta, head_dim=c.head_dim,
                         bias=c.attn_bias, qk_norm_eps=c.norm_eps if c.qk_norm else None,
                         rope_scaling=c.rope_scaling)

    def build_ffn(self, j: int) -> SwiGLU:
        return SwiGLU(self.cfg.d_model, self.cfg.d_ff)
