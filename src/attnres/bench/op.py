"""Time and memory of the depth-attention read, every implementation side by side.

For each source count n and implementation: the median forward+backward time, the forward
peak, the backward peak (above the level left by forward, so it counts what backward allocates
including the source gradients) and the bytes saved for backward beyond the inputs.
"""

from __future__ import annotations

import statistics
import time

import torch

from attnres.bench.memory import measure_peak, saved_tensor_bytes
from attnres.bench.timing import sync
from attnres.ops.attnres import depth_attention

IMPL_ORDER = ("naive", "recompute", "two_phase")
QUICK = dict(n_sources=(3, 5), batch=2, seq=8, d=16, repeats=2)


def _inputs(n, batch, seq, d, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sources = [torch.randn(batch, seq, d, generator=gen).to(device, dtype).requires_grad_() for _ in range(n)]
    query = (torch.randn(d, generator=gen) / d**0.5).to(device).requires_grad_()
    gain = (1 + 0.1 * torch.randn(d, generator=gen)).to(device).requires_grad_()
    grad_out = torch.randn(batch, seq, d, generator=gen).to(device, dtype)
    return query, gain, sources, grad_out


def run_op_bench(
    n_sources=(9, 17, 33),
    batch: int = 4,
    seq: int = 256,
    d: int = 256,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    quick: bool = False,
) -> list[dict]:
    """One row per (n, impl): times in ms, memory in bytes. `quick` uses tiny shapes."""
    if quick:
        n_sources, batch, seq, d, repeats = (QUICK[k] for k in ("n_sources", "batch", "seq", "d", "repeats"))
    device = torch.device(device)
    rows = []
    for n in n_sources:
        query, gain, sources, grad_out = _inputs(n, batch, seq, d, device, dtype)
        leaves = [query, gain, *sources]

        def clear_grads():
            for t in leaves:
                t.grad = None

        def step(impl):
            depth_attention(query, sources, gain, impl=impl).backward(grad_out)
            clear_grads()

        for impl in IMPL_ORDER:  # warm-up
            step(impl)
        # Repeats interleave the implementations so that load from other processes on the
        # machine hits them alike.
        times = {impl: [] for impl in IMPL_ORDER}
        for _ in range(repeats):
            for impl in IMPL_ORDER:
                sync(device)
                t0 = time.perf_counter()
                step(impl)
                sync(device)
                times[impl].append((time.perf_counter() - t0) * 1e3)

        for impl in IMPL_ORDER:
            out = {}

            def forward():
                out["h"] = depth_attention(query, sources, gain, impl=impl)

            fwd_peak = measure_peak(forward, device)
            bwd_peak = measure_peak(lambda: out.pop("h").backward(grad_out), device)
            clear_grads()
            saved = saved_tensor_bytes(lambda: depth_attention(query, sources, gain, impl=impl), exclude=leaves)
            rows.append(
                dict(
                    impl=impl, n=n, batch=batch, seq=seq, d=d, dtype=str(dtype).removeprefix("torch."),
                    device=str(device), fwd_bwd_ms=statistics.median(times[impl]),
                    spread_ms=max(times[impl]) - min(times[impl]), fwd_peak_bytes=fwd_peak,
                    bwd_peak_bytes=bwd_peak, saved_bytes=saved,
                )
            )
    return rows


def format_op_table(rows: list[dict]) -> str:
    """Markdown table; the ratio columns divide by the naive row of the same n."""
    naive = {r["n"]: r for r in rows if r["impl"] == "naive"}
    # One unit per table, picked so that tiny (quick) shapes do not print as zeros.
    big = max((r["fwd_peak_bytes"] for r in rows), default=0) >= 2**20
    unit, scale = ("MiB", 2.0**20) if big else ("KiB", 2.0**10)

    def ratio(r, key):
        base = naive.get(r["n"], {}).get(key)
        return f"{r[key] / base:.2f}" if base else "-"

    lines = [
        f"| n | impl | fwd+bwd ms (spread) | time / naive | fwd peak {unit} | bwd peak {unit} "
        f"| bwd peak / naive | saved {unit} |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['impl']} | {r['fwd_bwd_ms']:.2f} ({r['spread_ms']:.2f}) | {ratio(r, 'fwd_bwd_ms')} "
            f"| {r['fwd_peak_bytes'] / scale:.2f} | {r['bwd_peak_bytes'] / scale:.2f} | {ratio(r, 'bwd_peak_bytes')} "
            f"| {r['saved_bytes'] / scale:.2f} |"
        )
    return "\n".join(lines)
