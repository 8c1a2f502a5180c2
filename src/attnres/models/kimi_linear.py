"""A Kimi-Linear-style decoder: Kimi Delta Attention and MLA (NoPE) mixers interleaved 3:1,
each followed by a Mixture-of-Experts FFN (the first layer dense). docs/BACKBONE.md#the-kimi-linear-backbone.

Layer j is MLA iff (j + 1) % 4 == 0 or j is the last layer (the released model's rule), unless
`layer_pattern` (e.g. "KKKM", repeated) says otherwise. Residual connections are pluggable as for
every backbone (`models/decoder.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from attnres.layers.kda import KimiDeltaAttention
from attnres.layers.mla import MultiHeadLatentAttention
from attnres.layers.mlp import SwiGLU
from attnres.layers.moe import MoE, moe_layers
from attnres.models.decoder import DecoderConfig, DecoderLM


@dataclass
class KimiLinearConfig(DecoderConfig):
    layer_pattern: str = ""          # "" = 3:1 KDA:MLA with the last layer MLA; else e.g. "KKKM"
    # KDA
    kda_heads: int = 4
    kda_head_dim: int = 32           # d_k = d_v
    conv_size: int = 4
    gate_rank: int = 32              # r_f = r_g
    chunk_size: int = 16           # C of chunk_kda (docs/BENCHMARKS.md#kda-chunk-size)
    kda_mode: str = "auto"           # auto | chunk | recurrent
    # MLA
    mla_heads: int = 4
    d_nope: int = 32
    d_rope: int = 16
    d_v: int = 32
    kv_lora_rank: int = 16
    latent_norm_eps: float = 1e-6    # ε of the latent RMSNorm (kv_a_layernorm), as released
    mla_rope: bool = False           # NoPE, as in Kimi Linear
    rope_theta: float = 10000.0
    # FFN
    n_experts: int = 8
    top_k: int = 2
    n_shared: int = 1
    d_expert: int = 32
    dense_width: int = 96            # layers j < first_k_dense: (top_k + n_shared) * d_expert
    first_k_dense: int = 1
    routed_scale: float = 2.446
    bias_update_rate: float = 1e-3
    aux_loss_coef: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.layer_pattern and set(self.layer_pattern) - {"K", "M"}:
            raise ValueError(f"layer_pattern {self.layer_pattern!r} may hold only K (KDA) and M (MLA)")
        if self.top_k < 2:
            raise ValueError(f"top_k must be >= 2 (with renormalised top-1 the router gets no gradient), got {self.top_k}")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k {self.top_k} exceeds n_experts {self.n_experts}")

    def layer_kinds(self) -> list[str]:
        if self.layer_pattern:
            return [self.layer_pattern[j % len(self.layer_pattern)] for j in range(self.n_layers)]
        return ["M" if (j + 1) % 4 == 0 or j == self.n_layers - 1 else "K" for j in range(self.n_layers)]


# docs/BACKBONE.md#cpu-presets: the released shape ratios at CPU size (H·d_h = 2d, r_kv = H·d_h/8,
# d_rope = d_h/2, d_e ≈ 0.45d, dense width = (k + shared)·d_e), deliberately depth-heavy.
PRESETS = {
    "tiny": dict(d_model=64, n_layers=4, max_seq_len=128, kda_heads=4, mla_heads=4, kv_lora_rank=16,
                 n_experts=8, top_k=2, d_expert=32, dense_width=96),
    "small": dict(d_model=128, n_layers=8, max_seq_len=256, kda_heads=8, mla_heads=8, kv_lora_rank=32,
                  n_experts=16, top_k=2, d_expert=56, dense_width=168),
    "base": dict(d_model=192, n_layers=16, max_seq_len=512, kda_heads=12, mla_heads=12, kv_lora_rank=48,
                 n_experts=32, top_k=4, d_expert=88, dense_width=440),
}


def kimi_linear_config(preset: str = "tiny", **overrides) -> KimiLinearConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown kimi-linear preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(KimiLinearConfig(**PRESETS[preset]), **overrides)


class KimiLinearLM(DecoderLM):
    def __init__(self, cfg: KimiLinearConfig):
        super().__init__(cfg)

    def build_mixer(self, j: int) -> nn.Module:
        c = self.cfg
        if c.layer_kinds()[j] == "M":
            return MultiHeadLatentAttention(c.d_model, c.mla_heads, c.d_nope, c.d_rope, c.d_v,
                                            c.kv_lora_rank, rope=c.mla_rope, rope_theta=c.rope_theta,
                                            norm_eps=c.latent_norm_eps)
        return KimiDeltaAttention(c.d_model, c.kda_heads, c.kda_head_dim, c.conv_size, c.gate_rank,
                                  c.chunk_size, c.kda_mode, c.norm_eps)

    def build_ffn(self, j: int) -> nn.Module:
        c = self.cfg
        if j < c.first_k_dense:
            return SwiGLU(c.d_model, c.dense_width)
        return MoE(c.d_model, c.n_experts, c.top_k, c.d_expert, c.n_shared, c.routed_scale,
                   c.bias_update_rate, c.aux_loss_coef)

    def auxiliary_loss(self):
        return sum((m.aux_loss for m in moe_layers(self)), 0.0)

    def active_params(self, non_embedding: bool = True) -> int:
        """Parameters one token uses: routed experts count top_k of n_experts."""
        total = self.num_params(non_embedding=non_embedding)
        c = self.cfg
        for m in moe_layers(self):
            routed = sum(p.numel() for p in (m.w1, m.w2, m.w3))
            total -= routed - routed * c.top_k // c.n_experts
        return total
