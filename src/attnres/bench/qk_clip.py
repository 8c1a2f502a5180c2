"""QK-Clip in a short training run (docs/OPTIM.md#qk-clip): a tiny model whose attention logits grow
under Muon at a high LR, trained with and without clipping. Shared by the test
(tests/optim/test_qk_clip.py) and the demo (benchmarks/qk_clip_demo.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags
from attnres.layers.attention import Attention
from attnres.layers.mla import MultiHeadLatentAttention
from attnres.layers.norm import RMSNorm
from attnres.optim import build_optimizer
from attnres.optim.qk_clip import apply_qk_clip, collect_max_logits, enable_tracking, reset_max_logits

D, H, D_NOPE, D_ROPE, D_V, R_KV = 32, 4, 8, 4, 8, 8


class TinyLM(nn.Module):
    """Embedding, an MLA and a dense GQA mixer with PreNorm residuals, a head."""

    def __init__(self, vocab: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, D)
        self.mixers = nn.ModuleList([MultiHeadLatentAttention(D, H, D_NOPE, D_ROPE, D_V, R_KV),
                                     Attention(D, H, 2)])
        self.norms = nn.ModuleList([RMSNorm(D) for _ in range(3)])
        self.head = nn.Linear(D, vocab, bias=False)
        for p in (self.embed.weight, self.head.weight):
            tags.set_group(p, tags.ADAMW)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return self.head(self.norms[-1](h))


def train_max_logits(clip: bool, tau: float, steps: int = 80, lr: float = 1e-2,
                     vocab: int = 16) -> tuple[torch.Tensor, int]:
    """Muon at a high LR on a copy task (sharpening attention) over one fixed batch.

    Returns:
        (curve, clipped): curve [steps, n_layers, H] is the per-layer, per-head max logit
        measured in each step's forward (before its update); clipped counts the head-steps that
        QK-Clip scaled (0 without `clip`).
    """
    torch.manual_seed(0)
    first = torch.randint(0, vocab, (8, 12))
    seq = torch.cat([first, first], dim=1)
    inp, tgt = seq[:, :-1], seq[:, 1:]
    torch.manual_seed(1)
    model = TinyLM(vocab).train()
    enable_tracking(model)
    opt = build_optimizer(model, lr=lr, weight_decay=0.0)
    curve, clipped = [], 0
    for _ in range(steps):
        loss = F.cross_entropy(model(inp).flatten(0, 1), tgt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(collect_max_logits(model))
        if clip:
            clipped += apply_qk_clip(model, tau).n_clipped
        else:
            reset_max_logits(model)
    return torch.stack(curve), clipped
