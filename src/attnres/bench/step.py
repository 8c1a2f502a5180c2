"""Training-step time and peak memory of each residual kind on one backbone, side by side.

Every variant is built from the same seed (same backbone weights) and fed the same batch. The
timed repeats interleave the variants, so load from other processes hits them alike; the ratio
to the baseline is what to read, not the absolute time.
"""

from __future__ import annotations

import statistics
import time

import torch

from attnres.bench.memory import measure_peak
from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config
from attnres.optim import build_optimizer

VARIANTS = ("prenorm", "block", "full")
STEP_PARTS = ("forward", "backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step_bench(preset: str = "small", variants=VARIANTS, block_size: int = 4,
                   batch: int = 8, seq: int | None = None, repeats: int = 10, warmup: int = 2,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   impl: str = "recompute", quick: bool = False) -> list[dict]:
    """One row per variant: median step ms, its forward / backward / optimizer (Muon + AdamW)
    parts (`forward_ms`, ..., and each part's paired ratio to the first variant's,
    `forward_ratio`, ...), and peak bytes."""
    device = torch.device(device)
    if quick:
        preset, batch, seq, repeats, warmup = "tiny", 2, 32, 2, 1
    steps = {}
    for name in variants:
        torch.manual_seed(0)
        residual = ResidualConfig(name, block_size=block_size if name == "block" else 0, impl=impl)
        cfg = dense_config(preset, residual=residual)
        model = DenseLM(cfg).to(device)
        opt = build_optimizer(model, lr=1e-3)
        T = seq or cfg.max_seq_len
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, cfg.vocab_size, (batch, T + 1), generator=gen).to(device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

        def step(model=model, opt=opt, x=x, autocast=autocast):
            """One training step; returns the ms of its forward, backward and optimizer parts."""
            t0 = time.perf_counter()
            with autocast:
                _, loss = model(x[:, :-1], x[:, 1:])
            _sync(device)
            t1 = time.perf_counter()
            loss.backward()
            _sync(device)
            t2 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            return tuple(1e3 * t for t in (t1 - t0, t2 - t1, time.perf_counter() - t2))

        steps[name] = (step, model)
    for _ in range(warmup):
        for step, _ in steps.values():
            step()
    times = {name: [] for name in variants}
    parts = {name: [] for name in variants}  # (forward, backward, optimizer) ms per repeat
    names = list(steps)
    for k in range(repeats):
        # a rotating order, so that no arm always runs right after the same other arm
        for name in names[k % len(names):] + names[:k % len(names)]:
            step = steps[name][0]
            _sync(device)
            t0 = time.perf_counter()
            parts[name].append(step())
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for name, (step, model) in steps.items():
        peak = measure_peak(step, device)
        rows.append(dict(variant=name, preset=preset, batch=batch, seq=seq or model.cfg.max_seq_len,
                         block_size=block_size if name == "block" else None, impl=impl,
                         device=str(device), dtype=str(dtype).removeprefix("torch."),
                         step_ms=statistics.median(times[name]),
                         # median over repeats of this repeat's time over the first arm's
                         paired_ratio=statistics.median(
                             t / b for t, b in zip(times[name], times[names[0]])),
                         spread_ms=statistics.quantiles(times[name], n=4)[2] - statistics.quantiles(times[name], n=4)[0]
                         if len(times[name]) >= 2 else 0.0,
                         peak_bytes=peak, params=sum(p.numel() for p in model.parameters()),
                         **{f"{part}_ms": statistics.median(r[i] for r in parts[name])
                            for i, part in enumerate(STEP_PARTS)},
                         **{f"{part}_ratio": statistics.median(
                             r[i] / b[i] for r, b in zip(parts[name], parts[names[0]]))
                            for i, part in enumerate(STEP_PARTS)}))
    return rows


def format_step_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "prenorm"), None)
    lines = ["| variant | params | step ms (IQR) | time / baseline | paired time / baseline "
             "| peak MiB | memory / baseline |",
             "|:---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t_ratio = f"{r['step_ms'] / base['step_ms']:.3f}" if base else "-"
        m_ratio = f"{r['peak_bytes'] / base['peak_bytes']:.3f}" if base and base["peak_bytes"] else "-"
        name = r["variant"] + (f" (S={r['block_size']})" if r["block_size"] else "")
        lines.append(f"| {name} | {r['params']:,} | {r['step_ms']:.1f} ({r['spread_ms']:.1f}) | {t_ratio} | "
                     f"{r['paired_ratio']:.3f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {m_ratio} |")
    return "\n".join(lines)


def format_step_split_table(rows: list[dict]) -> str:
    """Forward / backward / optimizer ms of each variant, with each part's paired ratio."""
    lines = ["| variant | forward ms (× prenorm) | backward ms (× prenorm) | optimizer ms (× prenorm) "
             "| step: paired time / prenorm |", "|:---|---:|---:|---:|---:|"]
    for r in rows:
        name = r["variant"] + (f" (S={r['block_size']})" if r["block_size"] else "")
        cells = [f"{r[f'{p}_ms']:.1f} ({r[f'{p}_ratio']:.3f})" for p in STEP_PARTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['paired_ratio']:.3f} |")
    return "\n".join(lines)
