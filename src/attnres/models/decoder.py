"""The decoder every backbone shares: embedding, layers of (mixer, FFN) sublayers, final read,
final norm, head, and cached generation.

A backbone only says how to build layer j's mixer and FFN (`DecoderLM.build_mixer`,
`build_ffn`). How each sublayer's input is formed is the residual strategy's business
(`attnres.layers.residual`): the standard PreNorm residual, Full AttnRes or Block AttnRes, and
the Table-4 ablations (depth-read variants, DenseFormer, mHC).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.config import ResidualConfig
from attnres.layers.norm import RMSNorm
from attnres.layers.residual import DepthRecord, Residual


@dataclass
class DecoderConfig:
    """Fields every backbone has; backbones extend it with their own shapes."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    max_seq_len: int = 128
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_embeddings: bool = False     # the head reuses the embedding matrix (small pretrained models)
    # how each sublayer's input is formed: the config tree's `residual` section, unchanged
    residual: ResidualConfig = field(default_factory=ResidualConfig)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.residual, ResidualConfig):
            raise TypeError(f"residual must be a ResidualConfig, got {type(self.residual).__name__}")
        if self.residual.is_attnres and self.d_model % self.residual.heads:
            raise ValueError(f"residual.heads = {self.residual.heads} does not divide d_model "
                             f"{self.d_model}")

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers


@dataclass
class DecoderCache:
    """One cache per layer (whatever its mixer keeps) and the number of tokens seen."""

    layers: list = field(default_factory=list)
    length: int = 0

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)


class DecoderLayer(nn.Module):
    """Two sublayers, each with its own PreNorm; the residual stream forms their inputs."""

    def __init__(self, index: int, d_model: int, mixer: nn.Module, ffn: nn.Module,
                 residual: Residual, norm_eps: float):
        super().__init__()
        self.index = index
        # Each PreNorm's ε is scaled to its read (Residual.norm_eps), so a zero-initialised
        # AttnRes model starts exactly as the PreNorm baseline at the configured ε.
        self.res_mixer = residual.make_read(d_model, 2 * index)
        self.attn_norm = RMSNorm(d_model, residual.norm_eps(2 * index, norm_eps))
        self.self_attn = mixer
        self.res_ffn = residual.make_read(d_model, 2 * index + 1)
        self.ffn_norm = RMSNorm(d_model, residual.norm_eps(2 * index + 1, norm_eps))
        self.mlp = ffn

    def forward(self, stream, cache=None) -> None:
        self.mixer_sublayer(stream, cache)
        self.ffn_sublayer(stream)

    # the two halves, also run on their own by pipeline stages cut inside a layer

    def mixer_sublayer(self, stream, cache=None) -> None:
        """Sublayer 2j: read its input from the stream, PreNorm, mixer, write its output."""
        sub = 2 * self.index
        x = stream.read(sub)
        stream.write(sub, self.self_attn(self.attn_norm(x), cache))

    def ffn_sublayer(self, stream) -> None:
        """Sublayer 2j + 1: read, PreNorm, FFN, write."""
        sub = 2 * self.index + 1
        x = stream.read(sub)
        stream.write(sub, self.mlp(self.ffn_norm(x)))

    def sublayer_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Backbone parameters of the mixer and of the FFN sublayer (AttnRes reads excluded)."""
        def named(*mods):
            return [(f"{prefix}.{n}", p) for prefix, m in mods for n, p in m.named_parameters()]
        return [named(("attn_norm", self.attn_norm), ("self_attn", self.self_attn)),
                named(("ffn_norm", self.ffn_norm), ("mlp", self.mlp))]


class DecoderLM(nn.Module, abc.ABC):
    """Subclasses set `self.cfg` (with vocab_size, d_model, n_layers, max_seq_len, norm_eps,
    init_std and the residual fields) and implement `build_mixer(j)` and `build_ffn(j)`."""

    # parameter-name suffixes of the projections that write into the residual stream
    OUTPUT_PROJECTIONS = ("o_proj.weight", "w2.weight", "w2")

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.residual = Residual(cfg.residual, cfg.n_sublayers)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(j, cfg.d_model, self.build_mixer(j), self.build_ffn(j), self.residual,
                         cfg.norm_eps) for j in range(cfg.n_layers))
        self.final_res = self.residual.make_read(cfg.d_model, cfg.n_sublayers)
        self.norm = RMSNorm(cfg.d_model, self.residual.norm_eps(cfg.n_sublayers, cfg.norm_eps))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        tags.set_group(self.embed_tokens.weight, tags.ADAMW)
        tags.set_group(self.lm_head.weight, tags.ADAMW)
        self.reset_parameters()

    @abc.abstractmethod
    def build_mixer(self, j: int) -> nn.Module:
        """Layer j's mixer sublayer (attention, KDA, MLA, ...), without its PreNorm."""

    @abc.abstractmethod
    def build_ffn(self, j: int) -> nn.Module:
        """Layer j's FFN sublayer (SwiGLU, MoE, ...), without its PreNorm."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, init_std) for projections and embeddings, output projections scaled by
        1/sqrt(2·n_layers) (GPT-2), norm gains 1. Parameters a layer initialises itself (KDA's
        decay parameters, conv filters) are left alone.

        Only backbone tensors draw random numbers, in a fixed order, so a seed gives bitwise the
        same backbone whatever the residual kind (invariant I13, docs/THEORY.md#invariants)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if ".res_" in name or name.startswith("final_res") or tags.has_own_init(p):
                continue  # AttnRes reads keep their zero query and unit gain
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(self.OUTPUT_PROJECTIONS):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, std)

    def reads(self) -> list:
        return [r for layer in self.layers for r in (layer.res_mixer, layer.res_ffn)] + [self.final_res]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: DecoderCache | None = None, record: DepthRecord | None = None):
        """idx [B, T] token ids -> logits [B, T, V] (and the mean cross-entropy if targets)."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        stream = self.embed(idx, record)
        for j, layer in enumerate(self.layers):
            layer(stream, cache.layers[j] if cache is not None else None)
        logits = self.head(stream)
        if cache is not None:
            cache.length += T
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss + self.auxiliary_loss()

    # the forward's pieces, also run on their own by pipeline stages (attnres.parallel.pipeline)

    def embed(self, idx: torch.Tensor, record: DepthRecord | None = None):
        """The residual stream that starts from the embedding of idx [B, T]."""
        return self.residual.stream(self.embed_tokens(idx), self.reads(), record)

    def head(self, stream) -> torch.Tensor:
        """Logits [B, T, V] of the final read of `stream`, after the final norm."""
        h = stream.final()
        return self.lm_head(self.norm(h).to(self.lm_head.weight.dtype))

    def auxiliary_loss(self):
        """Extra training losses the layers ask for (e.g. an MoE balance loss); 0 by default."""
        return 0.0

    def new_cache(self) -> DecoderCache:
        return DecoderCache([layer.self_attn.empty_cache() for layer in self.layers])

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
        """Sample continuations of idx [B, T]; temperature 0 is greedy. Without the cache every
        step recomputes the whole (windowed) sequence: the reference the cache must match."""
        if use_cache and idx.shape[1] + max_new_tokens > self.cfg.max_seq_len:
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
