"""RMSNorm with a learnable gain (PreNorm, final norm, head-wise output norms)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnres import tags


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = tags.set_group(nn.Parameter(torch.ones(dim)), tags.ADAMW)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 whatever the activation dtype; the result returns in x's dtype.
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = F.rms_norm(x.to(dtype), (x.shape[-1],), self.weight.to(dtype), self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
