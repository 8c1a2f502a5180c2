"""Forward + backward throughput of `chunk_kda` against `recurrent_kda`, side by side."""

import statistics
import time

import torch
import torch.nn.functional as F

from attnres.bench.timing import paired_median, sync
from attnres.ops.kda import chunk_kda, recurrent_kda


def kda_inputs(B, T, H, K, V, device, seed=0) -> dict:
    """Random KDA inputs (q, k L2-normalised; g ≤ 0; β in (0, 1)) by name, as `chunk_kda` takes them."""
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


def _time_fwd_bwd(op, inputs, device, repeats, **kw) -> float:
    """Best-of-`repeats` seconds for one forward and backward (after one warm-up run)."""
    leaves = {n: x.detach().requires_grad_() for n, x in inputs.items()}
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        o, _ = op(**leaves, **kw)
        o.sum().backward()
        sync(device)
        if i:                                             # run 0 is the warm-up
            best = min(best, time.perf_counter() - start)
    return best


def run_kda_bench(T_values=(512, 2048), B=1, H=4, K=32, V=32, device="cpu", repeats=3,
                  quick=False) -> list[dict]:
    """Tokens/s (B·T per forward+backward) of chunk_kda (its defaults) and recurrent_kda, per T.

    `quick` caps T at 256 and takes one timed run, for smoke tests.
    """
    if quick:
        T_values, repeats = tuple(dict.fromkeys(min(T, 256) for T in T_values)), 1
    rows = []
    for T in T_values:
        x = kda_inputs(B, T, H, K, V, device)
        t_chunk = _time_fwd_bwd(chunk_kda, x, device, repeats)
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


# The chunking `chunk_kda` used before segments and the C = 16 / c = 4 defaults.
FORMER = dict(chunk_size=64, subchunk_size=16, segment_size=0)


def run_kda_scaling_bench(T_values=(512, 2048, 8192), B=1, H=4, K=64, V=64, device="cpu",
                          repeats=6, recurrent_max_T=2048, quick=False) -> list[dict]:
    """Time per token of `chunk_kda` (defaults), of its former chunking (`FORMER`) and, up to
    `recurrent_max_T`, of `recurrent_kda`: forward alone and forward + backward, per T.

    The median over `repeats` (after a warm-up), every repeat running every (T, arm, pass) in
    the same order, so that load drifting over the run hits every T alike; a shorter T runs
    min(8, max(T) // T) times per repeat, so that every T gets about as many seconds of samples.
    A median, not a minimum: the minimum of the more numerous short-T samples is the lower by
    chance alone, which read as time per token growing with T (docs/BENCHMARKS.md#kda-scaling-in-t)."""
    if quick:
        T_values, repeats, recurrent_max_T = (64, 128), 1, 128
    inputs = {T: kda_inputs(B, T, H, K, V, device) for T in T_values}
    arms = {"chunk": (chunk_kda, {}), "former": (chunk_kda, FORMER),
            "recurrent": (recurrent_kda, {})}
    samples = {}
    for i in range(repeats + 1):                          # repeat 0 is the warm-up
        for T, x in inputs.items():
            for name, (op, kw) in arms.items():
                for backward in (False, True):
                    if name == "recurrent" and (backward or T > recurrent_max_T):
                        continue
                    for _ in range(min(8, max(1, max(T_values) // T)) if i else 1):
                        leaves = {n: t.detach().requires_grad_(backward) for n, t in x.items()}
                        sync(device)
                        start = time.perf_counter()
                        with torch.set_grad_enabled(backward):
                            o, _ = op(**leaves, **kw)
                            if backward:
                                o.sum().backward()
                        sync(device)
                        key = (T, f"{name}_{'fwdbwd' if backward else 'fwd'}_us")
                        if i:
                            samples.setdefault(key, []).append(
                                (time.perf_counter() - start) / (B * T) * 1e6)
    return [dict(T=T, B=B, H=H, K=K, V=V, device=str(device), threads=torch.get_num_threads(),
                 **{k: statistics.median(t) for (t_, k), t in samples.items() if t_ == T})
            for T in T_values]


def format_kda_scaling_table(rows) -> str:
    """Markdown: µs per token, forward and forward + backward, now and before, per T; the
    recurrence's forward where measured."""
    lines = ["| T | B×H×K×V | chunk fwd µs/tok | chunk fwd+bwd µs/tok | former fwd µs/tok "
             "| former fwd+bwd µs/tok | recurrent fwd µs/tok | recurrent fwd / chunk fwd |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rec = r.get("recurrent_fwd_us")
        rec_cells = ("", "") if rec is None else (f"{rec:.1f}", f"{rec / r['chunk_fwd_us']:.1f}×")
        lines.append(f"| {r['T']:,} | {r['B']}×{r['H']}×{r['K']}×{r['V']} "
                     f"| {r['chunk_fwd_us']:.1f} | {r['chunk_fwdbwd_us']:.1f} "
                     f"| {r['former_fwd_us']:.1f} | {r['former_fwdbwd_us']:.1f} "
                     f"| {rec_cells[0]} | {rec_cells[1]} |")
    first, last = rows[0], rows[-1]
    lines += ["", f"Time per token at T = {last['T']:,} over T = {first['T']:,}: chunk forward "
              f"{last['chunk_fwd_us'] / first['chunk_fwd_us']:.2f}×, forward + backward "
              f"{last['chunk_fwdbwd_us'] / first['chunk_fwdbwd_us']:.2f}×; former "
              f"{last['former_fwd_us'] / first['former_fwd_us']:.2f}× and "
              f"{last['former_fwdbwd_us'] / first['former_fwdbwd_us']:.2f}×."]
    return "\n".join(lines)


def run_kda_chunk_size_bench(chunk_sizes=(16, 32, 64), B=8, T=256, H=8, K=32, device="cpu",
                             repeats=20) -> list[dict]:
    """`chunk_kda` forward + backward per chunk size C at one shape (K = V; the default is the
    Kimi-Linear `small` preset's training shape; docs/BENCHMARKS.md#kda-chunk-size). The sizes
    are interleaved round by round in a rotating order after one warm-up round; `ratio` is the
    paired median over the reference size (64 when measured, else the last)."""
    x = kda_inputs(B, T, H, K, K, device)
    sizes = list(chunk_sizes)
    times = {C: [] for C in sizes}
    for i in range(repeats + 1):                          # round 0 warms up
        for C in sizes[i % len(sizes):] + sizes[:i % len(sizes)]:
            leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
            sync(device)
            start = time.perf_counter()
            o, _ = chunk_kda(**leaves, chunk_size=C)
            o.sum().backward()
            sync(device)
            if i:
                times[C].append((time.perf_counter() - start) * 1e3)
    reference = 64 if 64 in times else sizes[-1]
    return [dict(C=C, B=B, T=T, H=H, K=K, device=str(device), threads=torch.get_num_threads(),
                 repeats=repeats, ms=statistics.median(times[C]), reference=reference,
                 ratio=paired_median(times[C], times[reference])) for C in sizes]


def format_kda_chunk_size_table(rows) -> str:
    r = rows[0]
    lines = [f"chunk_kda forward + backward, B×T×H×K = {r['B']}×{r['T']}×{r['H']}×{r['K']}, "
             f"{r['device']}, {r['threads']} threads, {r['repeats']} rounds", "",
             f"| C | ms (median) | paired time / C = {r['reference']} |", "|---:|---:|---:|"]
    lines += [f"| {r['C']} | {r['ms']:.1f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines)
