"""The transformers configs of attnres models: `AttnResLlamaConfig` (the dense, Llama-style
backbone) and `AttnResKimiLinearConfig` (KDA + MLA + MoE).

Shape fields keep transformers' Llama names, so tools that read them (generate, lm-eval,
vLLM's config parsing) find what they expect; `residual` is our `ResidualConfig` as a dict.
The model itself is built from `to_dense_config()` (docs/HF.md#the-attnres-model-type).
"""

from __future__ import annotations

import dataclasses

from transformers import PreTrainedConfig

from attnres.config import ResidualConfig
from attnres.models.dense import DenseConfig


class AttnResLlamaConfig(PreTrainedConfig):
    model_type = "attnres_llama"

    vocab_size: int = 32000
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 0                         # 0 = hidden_size / num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling_llama3: dict | None = None  # Llama 3's factor / low / high / original context
    attention_bias: bool = False
    qk_norm: bool = False                     # per-head q/k RMSNorm (Qwen3)
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    residual: dict | None = None              # ResidualConfig fields; None = prenorm
    source_model_type: str = ""               # llama | qwen3: what --to-hf exports a prenorm model as
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def to_model_config(self) -> DenseConfig:
        return self.to_dense_config()

    def to_dense_config(self) -> DenseConfig:
        return DenseConfig(
            vocab_size=self.vocab_size, d_model=self.hidden_size, n_layers=self.num_hidden_layers,
            max_seq_len=self.max_position_embeddings, norm_eps=self.rms_norm_eps,
            init_std=self.initializer_range, tie_embeddings=self.tie_word_embeddings,
            residual=ResidualConfig(**(self.residual or {})), n_heads=self.num_attention_heads,
            n_kv_heads=self.num_key_value_heads, d_ff=self.intermediate_size,
            rope_theta=self.rope_theta, head_dim=self.head_dim, attn_bias=self.attention_bias,
            qk_norm=self.qk_norm, rope_scaling=self.rope_scaling_llama3)

    @classmethod
    def from_dense_config(cls, c: DenseConfig, **extra) -> AttnResLlamaConfig:
        return cls(
            vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
            max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
            initializer_range=c.init_std, tie_word_embeddings=c.tie_embeddings,
            residual=dataclasses.asdict(c.residual), num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_ff, rope_theta=c.rope_theta,
            head_dim=c.head_dim, attention_bias=c.attn_bias, qk_norm=c.qk_norm,
            rope_scaling_llama3=c.rope_scaling, **extra)


class AttnResKimiLinearConfig(PreTrainedConfig):
    """The Kimi-Linear backbone (KDA + MLA + MoE): `attnres` holds `KimiLinearConfig`'s shape
    fields under our names (the backbone has many, and no transformers model shares them all);
    the fields tools read (`vocab_size`, `hidden_size`, `num_hidden_layers`,
    `max_position_embeddings`, `tie_word_embeddings`) are kept beside them."""

    model_type = "attnres_kimi_linear"

    attnres: dict | None = None               # KimiLinearConfig fields, residual excluded
    residual: dict | None = None
    vocab_size: int = 256
    hidden_size: int = 64
    num_hidden_layers: int = 4
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False
    source_model_type: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def to_model_config(self):
        from attnres.models.kimi_linear import KimiLinearConfig
        return KimiLinearConfig(**{**(self.attnres or {}), "vocab_size": self.vocab_size,
                                   "d_model": self.hidden_size, "n_layers": self.num_hidden_layers,
                                   "max_seq_len": self.max_position_embeddings,
                                   "tie_embeddings": self.tie_word_embeddings},
                                residual=ResidualConfig(**(self.residual or {})))

    @classmethod
    def from_model_config(cls, c, **extra) -> AttnResKimiLinearConfig:
        fields = dataclasses.asdict(c)
        residual = fields.pop("residual")
        return cls(attnres=fields, residual=residual, vocab_size=c.vocab_size,
                   hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                   max_position_embeddings=c.max_seq_len, tie_word_embeddings=c.tie_embeddings,
                   **extra)
