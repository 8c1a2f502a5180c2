"""Forward + backward throughput of `chunk_kda` against `recurrent_kda`, side by side."""

import time

import torch
import torch.nn.functional as F

from attnres.ops.kda import chunk_kda, recurrent_kda


def _inputs(B, T, H, K, V, device, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    return dict(
        q=F.normalize(randn(B, T, H, K), dim=-1),
        k=F.normalize(randn(B, T, H, K), dim=-1),
        v=randn(B, T, H, V),
        g=-F.softplus(randn(B, T, H, K)),
        beta=torch.sigmoid(randn(B, T, H)),
    )


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time_fwd_bwd(op, inputs, device, repeats, **kw) -> float:
    """Best-of-`repeats` seconds for one forward and backward (after one warm-up run)."""
    leaves = {n: x.detach().requires_grad_() for n, x in inputs.items()}
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        o, _ = op(**leaves, **kw)
        o.sum().backward()
        _sync(device)
        if i:                                             # run 0 is the warm-up
            best = min(best, time.perf_counter() - start)
    return best


def run_kda_bench(T_values=(512, 2048), B=1, H=4, K=32, V=32, device="cpu", repeats=3,
                  quick=False) -> list[dict]:
    """Tokens/s (B·T per forward+backward) of chunk_kda (C = 64) and recurrent_kda, per T.

    `quick` caps T at 256 and takes one timed run, for smoke tests.
    """
    if quick:
        T_values, repeats = tuple(dict.fromkeys(min(T, 256) for T in T_values)), 1
    rows = []
    for T in T_values:
        x = _inputs(B, T, H, K, V, device)
        t_chunk = _time_fwd_bwd(chunk_kda, x, device, repeats, chunk_size=64)
        t_rec = _time_fwd_bwd(recurrent_kda, x, device, repeats)
        rows.append(dict(T=T, B=B, H=H, K=K, V=V, device=str(device),
                         chunk_s=t_chunk, recurrent_s=t_rec,
                         chunk_tok_s=B * T / t_chunk, recurrent_tok_s=B * T / t_rec,
                         speedup=t_rec / t_chunk))
    return rows


def format_kda_table(rows) -> str:
    """Markdown table of `run_kda_bench` rows, with the chunk / recurrent speed ratio."""
    lines = ["| T | B×H×K×V | device | chunk tok/s | recurrent tok/s | chunk / recurrent |",
             "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['B']}×{r['H']}×{r['K']}×{r['V']} | {r['device']} "
                     f"| {r['chunk_tok_s']:,.0f} | {r['recurrent_tok_s']:,.0f} "
                     f"| {r['speedup']:.1f}× |")
    return "\n".join(lines)
