"""SwiGLU feed-forward: W2 · (SiLU(W1 x) ⊙ W3 x)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from attnres import tags


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        for lin in (self.w1, self.w2, self.w3):
            tags.set_group(lin.weight, tags.MUON)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
