"""`attnres compare`: the paper's central experiment at toy scale.

The same backbone is trained with the standard PreNorm residual (baseline), Full AttnRes and
Block AttnRes: identical initial backbone weights (same seed, invariant I13), identical data
order and hyperparameters. Each arm runs in its own process, so its peak memory is its own.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from attnres import config as config_mod
from attnres.config import Config, ResidualConfig
from attnres.data import prepare_data
from attnres.experiments import plots
from attnres.train.build import model_config
from attnres.train.metrics import read_metrics

ARMS = ("prenorm", "full", "block")  # residual kinds: the baseline is the PreNorm residual


@dataclass
class CompareSettings:
    """The defaults are the demo (`make demo`): dense tiny, 1,000 steps × 1,024 tokens, three
    seeds, every arm at peak LR 6e-3 (the baseline's best of 1.5e-3 … 1.2e-2 on this shape) and
    the default `residual.lr_mult`; two one-thread arms side by side fit 2 CPU cores (about
    7 minutes). docs/RESULTS.md section 1 has the measured table, docs/DESIGN.md the sweep."""

    backbone: str = "dense"
    preset: str = "tiny"
    steps: int = 1000
    residuals: tuple[str, ...] = ARMS    # one arm per residual kind
    block_size: int = 4                  # S of the block arm
    seeds: tuple[int, ...] = (0, 1, 2)
    data: str = "shakespeare"
    out: str = "runs/compare"
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    seq_len: int = 0
    lr: float = 6e-3             # 0 = the config default (optim.lr)
    overrides: list[str] = field(default_factory=list)
    progress: bool = True
    workers: int = 2             # arms trained side by side, each with cpu_count / workers threads


def arm_config(s: CompareSettings, kind: str, seed: int) -> Config:
    """The arm of residual `kind` (prenorm, full or block) for `seed`."""
    if kind not in ARMS:
        raise config_mod.ConfigError(f"unknown residual {kind!r}; choose from {', '.join(ARMS)}")
    residual = ResidualConfig(kind, block_size=s.block_size if kind == "block" else 0)
    return experiment_config(s, residual, seed)


def experiment_config(s: CompareSettings, residual: ResidualConfig, seed: int,
                      **sections: Any) -> Config:
    """The settings' config tree with `residual` for `seed`: the defaults, the settings applied
    with `dataclasses.replace` (and the `sections` given, e.g. a model shape), then the user's
    `--set` overrides, which win."""
    cfg = Config()
    model = replace(sections.pop("model", cfg.model), backbone=s.backbone, preset=s.preset)
    train = replace(sections.pop("train", cfg.train), steps=s.steps, seed=seed, data_seed=seed,
                    batch_size=s.batch_size, seq_len=s.seq_len, device=s.device, dtype=s.dtype,
                    eval_every=max(1, s.steps // 10), log_every=max(1, s.steps // 100),
                    progress=s.progress)
    optim = replace(cfg.optim, lr=s.lr) if s.lr else cfg.optim
    cfg = replace(cfg, model=model, train=train, optim=optim, residual=residual,
                  data=replace(cfg.data, source=s.data), **sections)
    return config_mod.load(base=cfg.to_dict(), overrides=list(s.overrides)) if s.overrides else cfg


def run_compare(s: CompareSettings) -> dict[str, Any]:
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in s.residuals:
        arm_config(s, kind, s.seeds[0])  # fail fast on a bad residual or override
    first = arm_config(s, s.residuals[0], s.seeds[0])
    # Tokenise once in this process; the arms find the cache.
    data = prepare_data(first.data.source, first.data.tokenizer, first.data.vocab_size or None,
                        first.data.val_fraction, first.data.cache_dir,
                        workers=first.data.workers, text_column=first.data.text_column)
    # the model shapes too (e.g. --seq-len beyond the preset's context): a bad one is one line
    # here, not a traceback in an arm's process
    for kind in s.residuals:
        model_config(arm_config(s, kind, s.seeds[0]), data.tokenizer.vocab_size)
    if s.workers < 1:
        raise config_mod.ConfigError(f"--workers must be >= 1, got {s.workers}")
    started = time.perf_counter()
    runs = [(kind, seed) for seed in s.seeds for kind in s.residuals]
    threads = max(1, (os.cpu_count() or 1) // s.workers) if s.workers > 1 else None

    def train(variant: str, seed: int) -> dict[str, Any]:
        run_dir = out / variant / f"seed-{seed}"
        print(f"== {variant} (seed {seed}) -> {run_dir}", flush=True)
        result = run_arm(arm_config(s, variant, seed), run_dir, threads=threads)
        print(f"== {variant} (seed {seed}): val loss {result['val_loss']:.4f}", flush=True)
        return result

    # Threads only wait: each arm trains in its own process (run_arm), so side by side arms
    # share the cores, not an interpreter.
    with ThreadPoolExecutor(max_workers=s.workers) as pool:
        results = list(pool.map(lambda run: train(*run), runs))
    arms: dict[str, list[dict[str, Any]]] = {kind: [] for kind in s.residuals}
    for (variant, _), result in zip(runs, results):
        arms[variant].append(result)
    summary = _summarise(s, arms, data, time.perf_counter() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_plots(s, out, arms)
    (out / "report.md").write_text(render_report(summary))
    return summary


def _run_arm(cfg_dict: dict, run_dir: str, resume: bool = False, threads: int | None = None) -> None:
    from attnres.train.trainer import Trainer
    cfg = config_mod.from_dict(cfg_dict)
    if threads:
        torch.set_num_threads(threads)
    has_ckpt = resume and (Path(run_dir) / "checkpoints" / "latest").is_file()
    Trainer(cfg, run_dir=run_dir, resume=run_dir if has_ckpt else None).train()


def run_arm(cfg: Config, run_dir: Path, resume: bool = False, in_process: bool = False,
            threads: int | None = None) -> dict[str, Any]:
    """Train one arm into `run_dir` and return its result.json plus history and parameter counts.

    By default the arm runs in a fresh spawned process, so its peak memory is its own;
    `in_process=True` trains in this process (faster to start; for tests). With `resume`, a
    run folder holding a checkpoint continues from it instead of starting over. `threads`
    sets the spawned process's intra-op CPU threads (for several runs side by side)."""
    if in_process:
        _run_arm(cfg.to_dict(), str(run_dir), resume)
    else:
        ctx = mp.get_context("spawn")
        proc = ctx.Process(target=_run_arm, args=(cfg.to_dict(), str(run_dir), resume, threads))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"arm {run_dir} failed with exit code {proc.exitcode}")
    return read_arm(Path(run_dir))


def read_arm(run_dir: Path) -> dict[str, Any]:
    """A finished run folder's result.json, with its history, parameter counts and analyses."""
    result = json.loads((run_dir / "result.json").read_text())
    records = read_metrics(run_dir / "metrics.jsonl")
    result["history"] = [r for r in records if r["kind"] in ("train", "eval")]
    result["params_detail"] = next(r for r in records if r["kind"] == "params")
    result["moe"] = [r for r in records if r["kind"] == "moe"]
    result["depth_trace"] = [r for r in records if r["kind"] == "depth"]
    analysis = run_dir / "analysis.json"
    result["analysis"] = json.loads(analysis.read_text()) if analysis.exists() else None
    return result


def _stats(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def _summarise(s: CompareSettings, arms: dict[str, list[dict]], data, wall: float) -> dict[str, Any]:
    first = next(iter(arms.values()))[0]
    variants = {}
    for name, runs in arms.items():
        val = [r["val_loss"] for r in runs]
        variants[name] = {
            "val_loss": statistics.fmean(val),
            "val_loss_sd": _stats(val)["sd"],
            "val_loss_per_seed": val,
            "val_bpb": statistics.fmean(r["val_bpb"] for r in runs),
            "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "params": runs[0]["params"],
            "attnres_params": runs[0]["params_detail"]["attnres"],
            "wall_s": statistics.fmean(r["wall_s"] for r in runs),
        }
    base = arms.get("prenorm")
    if base:
        for name, runs in arms.items():
            if name == "prenorm":
                continue
            diffs = [r["val_loss"] - b["val_loss"] for r, b in zip(runs, base)]
            variants[name]["delta_vs_baseline"] = {**_stats(diffs), "per_seed": diffs}
    cfg = arm_config(s, s.residuals[0], s.seeds[0])
    return {
        "backbone": s.backbone,
        "preset": s.preset,
        "corpus": data.corpus_name,
        "steps": s.steps,
        "tokens_per_step": first["history"] and s.batch_size * _seq_len(s, cfg),
        "seeds": list(s.seeds),
        "block_size": s.block_size,
        "n_sublayers": first["params_detail"]["n_sublayers"],
        "lr": cfg.optim.lr,
        "optimizer": cfg.optim.name,
        "schedule": cfg.sched.kind,
        "device": str(cfg.train.device),
        "hardware": _hardware(),
        "wall_s_total": wall,
        "variants": variants,
    }


def _seq_len(s: CompareSettings, cfg: Config) -> int:
    from attnres.train.build import BACKBONES
    return s.seq_len or BACKBONES[cfg.model.backbone][2][cfg.model.preset]["max_seq_len"]


def _hardware() -> str:
    cores = mp.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {cores} CPU cores, {gpu}, torch {torch.__version__}"


def _write_plots(s: CompareSettings, out: Path, arms: dict[str, list[dict]]) -> None:
    title = f"{s.backbone} backbone, {s.preset} preset, {s.steps} steps, seeds {list(s.seeds)}"
    plots.plot_loss_curves({n: [r["history"] for r in runs] for n, runs in arms.items()},
                           out / "loss_curves.png", title)
    analyses = {n: runs[0]["analysis"] for n, runs in arms.items() if runs[0]["analysis"]}
    if analyses:
        plots.plot_depth_profiles(analyses, out / "depth_profiles.png",
                                  f"depth analyses on a validation batch after training (seed {s.seeds[0]})")
        for name, analysis in analyses.items():
            if analysis.get("depth_weights"):
                plots.plot_depth_attention(analysis, out / f"depth_attention_{name}.png",
                                           f"{name}: mean depth-attention weights")
    traces = {n: runs[0]["depth_trace"] for n, runs in arms.items() if runs[0].get("depth_trace")}
    if traces:
        plots.plot_depth_trace(traces, out / "depth_trace.png",
                               f"depth softmax over training, first validation batch (seed {s.seeds[0]})")
    moe = {n: runs[0]["moe"] for n, runs in arms.items() if runs[0].get("moe")}
    if moe:
        plots.plot_expert_load(moe, out / "expert_load.png", f"MoE expert load ({title})")


def format_table(summary: dict[str, Any]) -> str:
    rows = ["| variant | params | val loss | Δ vs baseline | val bpb | tokens/s | peak RSS (MB) | wall (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in summary["variants"].items():
        loss = f"{v['val_loss']:.4f}"
        if not math.isnan(v.get("val_loss_sd", float("nan"))):
            loss += f" ± {v['val_loss_sd']:.4f}"
        delta = "—"
        if "delta_vs_baseline" in v:
            d = v["delta_vs_baseline"]
            delta = f"{d['mean']:+.4f}" + (f" ± {d['sd']:.4f}" if not math.isnan(d["sd"]) else "")
        rows.append(f"| {name} | {v['params']:,} | {loss} | {delta} | {v['val_bpb']:.4f} | "
                    f"{v['tokens_per_s']:,.0f} | {v['peak_rss_mb']:.0f} | {v['wall_s']:.0f} |")
    return "\n".join(rows)


def render_report(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    lines = [
        "# AttnRes comparison",
        "",
        f"Backbone `{summary['backbone']}`, preset `{summary['preset']}` ({summary['n_sublayers']} sublayers), corpus "
        f"`{summary['corpus']}`, {summary['steps']} steps × {summary['tokens_per_step']:,} tokens, "
        f"{summary['optimizer']} at peak LR {summary['lr']}, {summary['schedule']} schedule, "
        f"Block size S = {summary['block_size']}, seeds {seeds}.",
        f"Hardware: {summary['hardware']}. Total wall time {summary['wall_s_total']:.0f} s.",
        "",
        format_table(summary),
        "",
        "Val loss is the mean cross-entropy (nats/token) over fixed validation windows; bpb is bits "
        "per UTF-8 byte. Δ vs baseline pairs each seed's arm with the baseline of the same seed "
        "(same initial backbone weights, same data order).",
        "",
    ]
    lines += _spread_paragraph(summary)
    lines += ["", "## Plots", "", "![loss curves](loss_curves.png)", "",
              "![depth profiles](depth_profiles.png)", "",
              "![depth softmax over training](depth_trace.png)", ""]
    for name in summary["variants"]:
        if name != "prenorm":
            lines += [f"![{name} depth attention](depth_attention_{name}.png)", ""]
    if summary["backbone"] == "kimi-linear":
        lines += ["![expert load](expert_load.png)", ""]
    return "\n".join(lines)


def _spread_paragraph(summary: dict[str, Any]) -> list[str]:
    variants = summary["variants"]
    if len(summary["seeds"]) < 2:
        return ["**Seed spread:** this run used one seed, so it cannot tell a difference from seed "
                "noise by itself. Re-run with `--seeds 0 1 2` to measure the spread (the defaults' "
                "measured spread is in docs/RESULTS.md)."]
    sds = [v["val_loss_sd"] for v in variants.values()]
    out = [f"**Seed spread:** the standard deviation of the final val loss across seeds is "
           f"{min(sds):.4f}–{max(sds):.4f} per arm."]
    for name, v in variants.items():
        d = v.get("delta_vs_baseline")
        if d is None:
            continue
        verdict = ("larger than" if abs(d["mean"]) > 2 * max(d["sd"], 1e-12) else "not clearly larger than")
        per_seed = ", ".join(f"seed {k}: {x:+.4f}" for k, x in zip(summary["seeds"], d.get("per_seed", [])))
        out.append(f"- {name} − baseline = {d['mean']:+.4f} ± {d['sd']:.4f} (paired, sd over "
                   f"{d['n']} seeds; {per_seed}): {verdict} the paired seed noise "
                   f"(|mean| {'>' if verdict.startswith('larger') else '≤'} 2 sd).")
    return out
