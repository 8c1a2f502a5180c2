"""Training-step time and peak memory of each residual kind on one backbone, side by side.

Every variant is built from the same seed (same backbone weights) and fed the same batch. The
timed repeats interleave the variants, so load from other processes hits them alike; the ratio
to the baseline is what to read, not the absolute time.
"""

from __future__ import annotations

import functools
import math
import statistics
import time

import torch

from attnres.bench.memory import measure_peak
from attnres.bench.timing import iqr, paired_median, sync
from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config
from attnres.optim import build_optimizer

VARIANTS = ("prenorm", "block", "full")
STEP_PARTS = ("forward", "backward", "optimizer")


def _interleave(steps: dict, repeats: int, warmup: int, device: torch.device
                ) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, ...]]]]:
    """Per-arm step times (ms) over `repeats` rounds, one step of every arm per round, and
    each step's (forward, backward, optimizer) ms as its step function returns them."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    parts = {name: [] for name in steps}
    names = list(steps)
    for k in range(repeats):
        # a rotating order, so that no arm always runs right after the same other arm
        for name in names[k % len(names):] + names[:k % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            parts[name].append(steps[name]())
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times, parts


def _setup(preset, name, block_size, impl, device, batch, seq, dtype):
    """The variant's model (seed 0), its optimizer, a fixed batch and the step function."""
    torch.manual_seed(0)
    residual = ResidualConfig(name, block_size=block_size if name == "block" else 0, impl=impl)
    cfg = dense_config(preset, residual=residual)
    model = DenseLM(cfg).to(device)
    opt = build_optimizer(model, lr=1e-3)
    T = seq or cfg.max_seq_len
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, T + 1), generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(after=None):
        """One training step; returns the ms of its forward, backward and optimizer parts
        (`after`, QK-Clip's hook, counts as optimizer)."""
        t0 = time.perf_counter()
        with autocast:
            _, loss = model(x[:, :-1], x[:, 1:])
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        if after is not None:
            after()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return tuple(1e3 * t for t in (t1 - t0, t2 - t1, time.perf_counter() - t2))

    return model, step


def run_step_bench(preset: str = "small", variants=VARIANTS, block_size: int = 4,
                   batch: int = 8, seq: int | None = None, repeats: int = 10, warmup: int = 2,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   impl: str = "recompute", quick: bool = False, compile: bool = False) -> list[dict]:
    """One row per variant: median step ms, its forward / backward / optimizer (Muon + AdamW)
    parts (`forward_ms`, ..., and each part's paired ratio to the first variant's,
    `forward_ratio`, ...), and peak bytes.

    compile: also a `<variant>+compile` arm per variant, its mixers and FFNs compiled as
    `train.compile` does (attnres.parallel.modes.compile_layers), interleaved with the eager
    arms; its row adds `compile_s`, the first step's time (compilation included) and
    `eager_ratio`, the paired step-time ratio to its eager arm. Peak memory is not measured
    for compiled arms (0)."""
    from attnres.parallel.modes import compile_layers
    device = torch.device(device)
    if quick:
        preset, batch, seq, repeats, warmup = "tiny", 2, 32, 2, 1
    steps, compile_s = {}, {}
    for name in variants:
        steps[name] = _setup(preset, name, block_size, impl, device, batch, seq, dtype)
        if compile:
            model, step = _setup(preset, name, block_size, impl, device, batch, seq, dtype)
            compile_layers(model)
            t0 = time.perf_counter()
            step()
            sync(device)
            compile_s[name + "+compile"] = time.perf_counter() - t0
            steps[name + "+compile"] = model, step
    times, parts = _interleave({n: s for n, (_, s) in steps.items()}, repeats, warmup, device)
    first = next(iter(steps))
    rows = []
    for name, (model, step) in steps.items():
        variant = name.removesuffix("+compile")
        peak = 0 if name in compile_s else measure_peak(step, device)
        row = dict(variant=name, preset=preset, batch=batch, seq=seq or model.cfg.max_seq_len,
                   block_size=block_size if variant == "block" else None, impl=impl,
                   device=str(device), dtype=str(dtype).removeprefix("torch."),
                   step_ms=statistics.median(times[name]),
                   paired_ratio=paired_median(times[name], times[first]),
                   spread_ms=iqr(times[name]),
                   peak_bytes=peak, params=sum(p.numel() for p in model.parameters()))
        for i, part in enumerate(STEP_PARTS):
            row[f"{part}_ms"] = statistics.median(p[i] for p in parts[name])
            row[f"{part}_ratio"] = paired_median([p[i] for p in parts[name]],
                                                 [b[i] for b in parts[first]])
        if name in compile_s:
            row.update(compile_s=compile_s[name], eager_ratio=paired_median(times[name], times[variant]))
        rows.append(row)
    return rows


QK_ARMS = ("off", "exact", "bound", "bound-all-over")


def run_qk_clip_bench(preset: str = "small", batch: int = 8, seq: int | None = None,
                      repeats: int = 20, warmup: int = 2, device: str | torch.device = "cpu",
                      tau: float = 100.0, arms=QK_ARMS) -> list[dict]:
    """QK-Clip's cost in the prenorm training step (docs/OPTIM.md#qk-clip-tracking-cost): arms
    `off` (no tracking, no clip), `exact` (every head's max recomputed, then `apply_qk_clip`),
    `bound` (heads under their Cauchy–Schwarz bound skip it; the trainer's non-logged steps) and
    `bound-all-over` (τ in the layers below every bound: the bound plus the exact max of every
    head, the worst case). Same weights and batch, interleaved; `paired_ratio` is over `off`."""
    from attnres.optim.qk_clip import apply_qk_clip, enable_tracking
    device = torch.device(device)
    steps, counts = {}, {}
    for arm in arms:
        model, step = _setup(preset, "prenorm", 0, "recompute", device, batch, seq, torch.float32)
        if arm != "off":
            layer_tau = {"exact": None, "bound": tau, "bound-all-over": -math.inf}[arm]
            enable_tracking(model, tau=layer_tau)
            counts[arm] = []

            def after(model=model, arm=arm):
                counts[arm].append(apply_qk_clip(model, tau).n_clipped)
            step = functools.partial(step, after)
        steps[arm] = model, step
    times, _ = _interleave({n: s for n, (_, s) in steps.items()}, repeats, warmup, device)
    return [dict(arm=arm, preset=preset, batch=batch, seq=seq or model.cfg.max_seq_len,
                 device=str(device), tau=tau, step_ms=statistics.median(times[arm]),
                 spread_ms=iqr(times[arm]), paired_ratio=paired_median(times[arm], times[arms[0]]),
                 clipped_heads=sum(counts.get(arm, [])))
            for arm, (model, _) in steps.items()]


def format_qk_clip_table(rows: list[dict]) -> str:
    lines = ["| arm | step ms (IQR) | paired time / off | cost, % of the step |", "|:---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['step_ms']:.1f} ({r['spread_ms']:.1f}) | "
                     f"{r['paired_ratio']:.3f} | {100 * (r['paired_ratio'] - 1):+.1f} |")
    return "\n".join(lines)


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
    compiled = [r for r in rows if "compile_s" in r]
    if compiled:
        lines += ["", "| compiled variant | compile s (first step) | paired time / eager |",
                  "|:---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['compile_s']:.1f} | {r['eager_ratio']:.3f} |" for r in compiled]
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
