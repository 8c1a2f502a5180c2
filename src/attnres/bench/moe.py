"""Forward + backward time of the MoE FFN (sorted and naive dispatch) against a dense SwiGLU of
equal active parameters, width (top_k + n_shared)·d_expert, side by side.

The MoE arms include the router and the shared expert; the dense arm is the FFN the MoE replaces
at equal per-token matmul FLOPs (the router's d·E is the only extra). The naive dispatch runs
every expert on every token, so it costs about (E + n_shared)/(k + n_shared) dense FFNs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from attnres.bench.timing import sync
from attnres.layers.mlp import SwiGLU
from attnres.layers.moe import MoE

ARMS = ("dense", "moe_sorted", "moe_naive")


def _time_fwd_bwd(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best-of-`repeats` seconds for one forward and backward (after one warm-up run)."""
    best = float("inf")
    for i in range(repeats + 1):
        module.zero_grad(set_to_none=True)
        leaf = x.detach().requires_grad_()
        sync(x.device)
        start = time.perf_counter()
        module(leaf).sum().backward()
        sync(x.device)
        if i:                                             # run 0 is the warm-up
            best = min(best, time.perf_counter() - start)
    return best


def run_moe_bench(d: int = 128, n_experts: int = 16, top_k: int = 2, d_expert: int = 56,
                  tokens: int = 2048, repeats: int = 5, device="cpu", n_shared: int = 1) -> list[dict]:
    """One row per arm (dense, moe_sorted, moe_naive): best forward+backward seconds on
    `tokens` random tokens, tokens/s, total and active parameters, and time relative to dense.

    Defaults are the `small` preset's FFN (d = 128, 16 experts, top-2, d_e = 56, one shared).
    """
    device = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(tokens, d, device=device)
    width = (top_k + n_shared) * d_expert
    moe_active = d * n_experts + 3 * d * (top_k + n_shared) * d_expert     # router + k routed + shared
    modules = {
        "dense": (SwiGLU(d, width), 3 * d * width),
        "moe_sorted": (MoE(d, n_experts, top_k, d_expert, n_shared=n_shared, impl="sorted"), moe_active),
        "moe_naive": (MoE(d, n_experts, top_k, d_expert, n_shared=n_shared, impl="naive"), moe_active),
    }
    rows = []
    for arm in ARMS:
        module, active = modules[arm]
        module.to(device).train()
        seconds = _time_fwd_bwd(module, x, repeats)
        rows.append(dict(arm=arm, tokens=tokens, d=d, n_experts=n_experts, top_k=top_k,
                         d_expert=d_expert, n_shared=n_shared, device=str(device),
                         params=sum(p.numel() for p in module.parameters()), active_params=active,
                         seconds=seconds, tok_s=tokens / seconds))
    dense_s = rows[0]["seconds"]
    for r in rows:
        r["vs_dense"] = r["seconds"] / dense_s
    return rows


def format_moe_table(rows) -> str:
    """Markdown table of `run_moe_bench` rows, with the time relative to the dense FFN."""
    r0 = rows[0]
    head = (f"tokens={r0['tokens']}, d={r0['d']}, E={r0['n_experts']}, top-{r0['top_k']}, "
            f"d_e={r0['d_expert']}, shared={r0['n_shared']}, device {r0['device']}, fp32")
    lines = [head, "",
             "| arm | params | active params | fwd+bwd ms | tok/s | time / dense |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['params']:,} | {r['active_params']:,} "
                     f"| {1e3 * r['seconds']:.2f} | {r['tok_s']:,.0f} | {r['vs_dense']:.2f}× |")
    return "\n".join(lines)
