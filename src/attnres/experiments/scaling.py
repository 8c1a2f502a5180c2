"""`attnres scaling`: a size ladder × {baseline, Full, Block} × seeds, fitted as L = A·C^(−α).

The toy-scale version of [AR] §5.1 (targets A1–A2, docs/TARGETS.md#a1-loss-by-model-size). Every
size of the ladder is trained with each arm and seed on a token budget proportional to its parameter
count; each run's raw result is one JSON file, `<out>/<size>/<arm>/seed-<k>.json`, from which
`attnres.experiments.report` rebuilds the tables, the fits, the compute advantage and the plot.

The ladder (`ladder_sizes`) grows depth and width together at the presets' aspect ratio,
d_model / n_layers = 16, with the paper's H = L_b heads (so head dim 16), plain multi-head
attention and the SwiGLU width ≈ 8/3·d of the presets. The default four sizes run from the
`tiny` shape (d 64, 4 layers) to d 112, 7 layers: about 0.2M to 1.1M non-embedding parameters,
a factor 5 in size and 25 in compute at a fixed tokens-per-parameter ratio. At the default 5
tokens per parameter (1.1M to 5.5M tokens per run) the 24 runs take about 2.5 hours on two CPU
cores with `--workers 2` (docs/RESULTS.md); `--sizes 5` adds the `small` shape (d 128, 8 layers).

Compute per run (docs/TARGETS.md#a2-scaling-law-fits-and-compute-advantage):
C = 6·(N_active_non-emb + d·V)·D FLOPs, with the LM-head matmul counted and the embedding lookup
not; in code N_c = `num_params(non_embedding=True)`, which includes the head and the AttnRes reads. The [AR]-style
count N_c − d·V is logged beside it. Block AttnRes uses N ≈ 8 blocks (S = ceil(L/8),
`units.block_size_for_num_blocks`), but never S = 1, which would make Block identical to Full at the
shallow end of the ladder.

Every run ends with the depth analyses on a validation batch (`attnres.analysis.depth`), kept in
its JSON, so the report can show the Figs. 5 and 8 counterparts of the largest size.

Resumable: a run whose result JSON exists is skipped (after checking it was made with the same
settings), and an unfinished run continues from its last checkpoint (`train.ckpt_every`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnres import units
from attnres import config as config_mod
from attnres.config import Config, ConfigError, ResidualConfig
from attnres.data import prepare_data
from attnres.experiments import compare, fit, report
from attnres.train.build import build_model, resolve_device

ARMS = compare.ARMS
ASPECT = 16        # d_model / n_layers, as in the tiny and small presets
HEAD_DIM = 16      # n_heads = n_layers (H = L_b, [AR] Table 1) at d = 16·L_b
TARGET_BLOCKS = 8  # Block AttnRes N ≈ 8, as in [AR] §5.1


@dataclass(frozen=True)
class Size:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int

    @property
    def name(self) -> str:
        return f"d{self.d_model}-L{self.n_layers}"

    @property
    def n_sublayers(self) -> int:
        return units.sublayers_from_layers(self.n_layers)

    @property
    def block_size(self) -> int:
        return max(2, units.block_size_for_num_blocks(self.n_sublayers, TARGET_BLOCKS))


def swiglu_width(d_model: int) -> int:
    """≈ 8/3·d rounded up to a multiple of 16, as the dense presets do."""
    return 16 * math.ceil(8 * d_model / 3 / 16)


def ladder_sizes(n: int, first_layers: int = 4) -> list[tuple[int, int, int, int]]:
    """n (d_model, n_layers, n_heads, d_ff) shapes with n_layers = first_layers, +1, ...

    d_model = 16·n_layers and n_heads = n_layers; the default n = 5 spans tiny (64, 4) to
    small (128, 8)."""
    if n < 1 or first_layers < 1:
        raise ValueError(f"need n >= 1 sizes from first_layers >= 1, got {n}, {first_layers}")
    out = []
    for layers in range(first_layers, first_layers + n):
        d = ASPECT * layers
        out.append((d, layers, d // HEAD_DIM, swiglu_width(d)))
    return out


@dataclass
class ScalingSettings:
    sizes: int = 4
    first_layers: int = 4
    seeds: int = 2                  # seeds 0 .. seeds-1
    tokens_per_param: float = 5.0   # D = tokens_per_param · N_c, rounded to whole steps
    min_steps: int = 50
    arms: tuple[str, ...] = ARMS
    data: str = "shakespeare"
    out: str = "results/scaling"    # per-run JSONs, report, fits, plot (small; kept)
    runs: str = "runs/scaling"      # run folders: metrics, checkpoints (large)
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 0.0                 # 0 = the config default
    overrides: list[str] = field(default_factory=list)
    in_process: bool = False        # train in this process instead of a spawned one (tests)
    workers: int = 1                # runs trained side by side (`run_jobs`)
    progress: bool = True
    quick: bool = False


QUICK = dict(sizes=4, first_layers=1, tokens_per_param=0.05, min_steps=2, batch_size=4,
             seq_len=64, out="results/scaling-quick", runs="runs/scaling-quick", in_process=True,
             quick=True)


def settings(quick: bool = False, **changes: Any) -> ScalingSettings:
    """Defaults (or the `--quick` ones: four tiny sizes, a few steps each) with `changes`
    applied; a change of None keeps the default."""
    base = ScalingSettings(**QUICK) if quick else ScalingSettings()
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class Run:
    size: Size
    arm: str
    seed: int
    steps: int
    cfg: Config


def plan(s: ScalingSettings, vocab_size: int) -> list[Run]:
    """Every (size, arm, seed) run in training order: seed by seed, sizes small to large, so a
    stopped sweep already holds whole ladders."""
    for arm in s.arms:
        if arm not in ARMS:
            raise ConfigError(f"unknown residual {arm!r}; choose from {', '.join(ARMS)}")
    runs = []
    sizes = [Size(*shape) for shape in ladder_sizes(s.sizes, s.first_layers)]
    steps = {size: budget_steps(s, size, vocab_size) for size in sizes}
    for seed in range(s.seeds):
        for size in sizes:
            for arm in s.arms:
                runs.append(Run(size, arm, seed, steps[size], run_config(s, size, arm, seed, steps[size])))
    return runs


def run_config(s: ScalingSettings, size: Size, arm: str, seed: int, steps: int) -> Config:
    """The dense model of `size` with residual `arm` (Block: S = `size.block_size`)."""
    cs = compare.CompareSettings(backbone="dense", preset="small", steps=steps, seeds=(seed,),
                                 data=s.data, device=s.device, dtype=s.dtype,
                                 batch_size=s.batch_size, seq_len=s.seq_len, lr=s.lr,
                                 overrides=list(s.overrides), progress=s.progress)
    base = Config()
    model = replace(base.model, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
                    n_kv_heads=size.n_heads, d_ff=size.d_ff, max_seq_len=s.seq_len)
    train = replace(base.train, ckpt_every=max(1, min(500, steps // 10)))
    residual = ResidualConfig(arm, block_size=size.block_size if arm == "block" else 0)
    return compare.experiment_config(cs, residual, seed, model=model, train=train)


def compute_params(cfg: Config, vocab_size: int) -> int:
    """N_c = non-embedding parameters including the LM head (built on CPU, cheap at our sizes)."""
    return build_model(cfg, vocab_size).num_params(non_embedding=True)


def budget_steps(s: ScalingSettings, size: Size, vocab_size: int) -> int:
    """Steps for D ≈ tokens_per_param · N_c of the size's baseline (shared by every arm)."""
    n_c = compute_params(run_config(s, size, "prenorm", 0, 1), vocab_size)
    return max(s.min_steps, round(s.tokens_per_param * n_c / (s.batch_size * s.seq_len)))


def result_path(out: str | Path, run: Run) -> Path:
    return Path(out) / run.size.name / run.arm / f"seed-{run.seed}.json"


def run_folder(root: str | Path, run: Run) -> Path:
    return Path(root) / run.size.name / run.arm / f"seed-{run.seed}"


_PRESENTATION = (("train", "progress"), ("train", "tensorboard"), ("train", "device"),
                 ("train", "out_dir"), ("data", "cache_dir"))


def fingerprint(config: Config | dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's outcome: the config without where and how it is shown."""
    d = json.loads(json.dumps(config.to_dict() if isinstance(config, Config) else config))
    d = config_mod.upgrade_residual(d)  # records saved before the one residual section
    d["residual"] = dataclasses.asdict(ResidualConfig(**d.get("residual", {})))
    for section, key in _PRESENTATION:
        d.get(section, {}).pop(key, None)
    return d


def run_scaling(s: ScalingSettings, dry_run: bool = False) -> report.Report | None:
    """Train every missing run, then rebuild the report, fits and plot in `s.out` (None for a
    dry run, which only prints the plan)."""
    out = Path(s.out)
    first = run_config(s, Size(*ladder_sizes(1, s.first_layers)[0]), "prenorm", 0, 1)
    data = prepare_data(first.data.source, first.data.tokenizer, first.data.vocab_size or None,
                        first.data.val_fraction, first.data.cache_dir,
                        workers=first.data.workers, text_column=first.data.text_column)
    vocab = data.tokenizer.vocab_size
    runs = plan(s, vocab)
    print(format_plan(s, runs, vocab), flush=True)
    if dry_run:
        return None
    jobs = [Job(f"{run.size.name} {run.arm} seed {run.seed}", run.cfg, run.steps,
                result_path(out, run), run_folder(s.runs, run),
                lambda result, start, run=run: run_record(run, result, vocab, data.corpus_name, start))
            for run in runs]
    trained, skipped = run_jobs(jobs, s.in_process, s.workers)
    print(f"finished {trained} runs, {skipped} already done", flush=True)
    return report.write_report(out)


@dataclass
class Job:
    """One run of a resumable sweep: its config, where its raw result JSON and its run folder
    go, and how the JSON is made from the trained run, `record(result, resumed_from_step)`."""
    label: str
    cfg: Config
    steps: int
    result_path: Path
    run_dir: Path
    record: Callable[[dict[str, Any], int], dict[str, Any]]


def run_jobs(jobs: list[Job], in_process: bool = False, workers: int = 1) -> tuple[int, int]:
    """Train every job whose result JSON is missing; returns (trained, skipped).

    A finished result is checked against the job's settings and skipped; a run folder that
    already holds the finished run (e.g. one another sweep shares) is collected, not retrained;
    an unfinished one continues from its last checkpoint. Runs made with other settings are
    refused (`ConfigError`), never mixed in.

    `workers` > 1 trains that many jobs side by side, each in its own process with an equal
    share of the CPU threads: on a few CPU cores small models use one thread poorly, so two
    one-thread runs finish sooner than two two-thread runs in turn. Jobs start in order."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers > 1 and in_process:
        raise ConfigError("workers > 1 trains each run in its own process; drop --in-process")
    for job in jobs:  # refuse mixed settings before anything trains
        if job.result_path.exists():
            _check_same(job.result_path, json.loads(job.result_path.read_text()).get("config"),
                        job.cfg, "result")
        elif (job.run_dir / "config.json").exists():
            _check_same(job.run_dir, json.loads((job.run_dir / "config.json").read_text()), job.cfg,
                        "run folder")
    todo = [job for job in jobs if not job.result_path.exists()]
    if workers == 1:
        for job in todo:
            _run_job(job, in_process, threads=None)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # threads wait; processes train
            for future in [pool.submit(_run_job, job, False, threads) for job in todo]:
                future.result()
    return len(todo), len(jobs) - len(todo)


def _run_job(job: Job, in_process: bool, threads: int | None) -> None:
    run_dir = job.run_dir
    segment = run_dir / "segment.json"  # where the last training segment started
    if _finished(run_dir, job.steps):  # trained before (its result JSON missing or elsewhere)
        print(f"== {job.label}: already trained in {run_dir}", flush=True)
        result = compare.read_arm(run_dir)
        start = json.loads(segment.read_text())["start_step"] if segment.exists() else 0
    else:
        start = _checkpoint_step(run_dir)
        print(f"== {job.label}: {job.steps} steps"
              + (f", resuming at step {start}" if start else "") + f" -> {run_dir}", flush=True)
        _write_json(segment, {"start_step": start})
        result = compare.run_arm(job.cfg, run_dir, resume=True, in_process=in_process, threads=threads)
        print(f"== {job.label}: done, val loss {result['val_loss']:.4f}", flush=True)
    _write_json(job.result_path, job.record(result, start))


def run_record(run: Run, result: dict[str, Any], vocab_size: int, corpus: str,
               resumed_from: int) -> dict[str, Any]:
    """The raw per-run JSON: everything a table or a fit needs, nothing derived from others."""
    cfg = run.cfg
    detail = result["params_detail"]
    n_c = detail["non_embedding"]
    head = run.size.d_model * vocab_size
    tokens = result["step"] * cfg.train.batch_size * cfg.train.seq_len
    flops = 6 * n_c * tokens
    return {
        "experiment": "scaling", "group": run.size.name, "arm": run.arm, "seed": run.seed,
        "val_loss": result["val_loss"], "val_bpb": result["val_bpb"],
        "compute_flops": flops, "compute_pfs_days": fit.flops_to_pfs_days(flops),
        "params": result["params"], "params_compute": n_c, "params_non_embedding_ar": n_c - head,
        "params_attnres": detail["attnres"],
        "tokens": tokens, "steps": result["step"],
        "batch_size": cfg.train.batch_size, "seq_len": cfg.train.seq_len,
        "d_model": run.size.d_model, "n_layers": run.size.n_layers, "n_heads": run.size.n_heads,
        "d_ff": run.size.d_ff, "n_sublayers": run.size.n_sublayers,
        "block_size": cfg.residual.block_size or None,
        "vocab_size": vocab_size, "corpus": corpus, "lr": cfg.optim.lr,
        "wall_s": result["wall_s"], "train_s": result["train_s"],
        "tokens_per_s": result["tokens_per_s"], "peak_rss_mb": result["peak_rss_mb"],
        "resumed_from_step": resumed_from,  # > 0: wall and tokens/s cover the last segment only
        "device": str(resolve_device(cfg.train.device)), "dtype": cfg.train.dtype,
        "hardware": compare._hardware(),
        "run_dir": result["run_dir"], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": fingerprint(cfg),
        "analysis": result.get("analysis"),  # depth analyses on a validation batch, if made
    }


def format_plan(s: ScalingSettings, runs: list[Run], vocab_size: int) -> str:
    seen: dict[Size, int] = {}
    for run in runs:
        seen.setdefault(run.size, run.steps)
    tokens_per_step = s.batch_size * s.seq_len
    lines = [f"scaling ladder: {len(seen)} sizes × {len(s.arms)} arms × {s.seeds} seeds = {len(runs)} runs, "
             f"{s.tokens_per_param:g} tokens per parameter, {tokens_per_step:,} tokens per step",
             "| size | d | layers | heads | d_ff | Block S (N) | N_c | N (AR) | steps | tokens | C (PFLOP/s-days) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size, steps in seen.items():
        n_c = compute_params(run_config(s, size, "prenorm", 0, 1), vocab_size)
        tokens = steps * tokens_per_step
        n_blocks = units.num_blocks(size.n_sublayers, size.block_size)
        lines.append(f"| {size.name} | {size.d_model} | {size.n_layers} | {size.n_heads} | {size.d_ff} | "
                     f"{size.block_size} ({n_blocks}) | {n_c:,} | {n_c - size.d_model * vocab_size:,} | "
                     f"{steps:,} | {tokens:,} | {fit.flops_to_pfs_days(6 * n_c * tokens):.3e} |")
    return "\n".join(lines)


def _finished(run_dir: Path, steps: int) -> bool:
    path = run_dir / "result.json"
    return path.is_file() and json.loads(path.read_text()).get("step") == steps


def _checkpoint_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return 0
    return int(latest.read_text().strip().split("-")[1])


def _check_same(where: Path, saved: dict[str, Any] | None, cfg: Config, what: str) -> None:
    """Refuse to mix runs made with other settings. Keys only one side has are ignored, so a
    config key added to the code later (at its default) does not orphan finished runs."""
    if saved is None:
        raise ConfigError(f"{where}: {what} has no stored config; delete it or use another --out/--runs")
    old, now = fingerprint(saved), fingerprint(cfg)
    diffs = [f"{sec}.{key}: {old[sec][key]!r} -> {now[sec][key]!r}"
             for sec in old.keys() & now.keys() for key in old[sec].keys() & now[sec].keys()
             if old[sec][key] != now[sec][key]]
    if diffs:
        raise ConfigError(f"{where}: {what} was made with other settings ({'; '.join(sorted(diffs))}); "
                          f"delete it or use another --out/--runs")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write then rename, so a killed sweep never leaves a half-written result behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
