"""`attnres ablate` and `attnres sweep`: [AR] Table 4 and the block-size sweep of Fig. 6.

Both train one dense model with the ablation model's depth, 16 layers = 32 sublayers (targets A3, A4
of docs/TARGETS.md#a3-table-4-ablations), scaled in width for a CPU: d = 64, 4 heads of 16 (the
scaling ladder's head dim, plain multi-head attention), SwiGLU width 176, byte tokens, 8 × 128
tokens per step, 300 steps (about 0.3M tokens), Muon at the config's peak LR, WSD schedule. Every
arm shares the backbone, its initialisation (same seed, invariant I13), the data order, the budget
and the LR; only the residual mechanism differs, set by config overrides
(docs/THEORY.md#ablation-variants):

- `ablate`: the twelve rows of Table 4 (`VARIANTS`), each a list of overrides.
- `sweep`: Block AttnRes with S ∈ {1, 2, 4, 8, 16, 32} sublayers (N = 32 … 1 blocks) and the
  baseline. S = 1 is the `full` variant and S = 4 the `block` variant, with identical configs.

Cost, measured with one thread (2-core x86 CPU, the other core busy with another job, torch
2.13): a training step takes 0.19 s (baseline), 0.26 s (Block), 0.36 to 0.6 s (Full and its
variants) and 1.4 s (mHC); one step of every variant sums to 5.4 s, one 16-batch evaluation
1.8 s × 16. The default `ablate` suite (12 variants × 2 seeds × 300 steps, three evaluations,
process start-up) needs about 2 × (1,620 + 85 + 50) s ≈ 3,500 s ≈ 60 minutes of one core;
the first steps of a run and a busier machine were up to 1.4× slower, which still fits in
90 minutes. `sweep` adds S ∈ {2, 8, 16, 32} (≈ 0.25 s a step): about 11 minutes after
`ablate`, whose baseline, S = 1 and S = 4 runs it reuses, or about 20 on its own.

Resumable with the scaling harness (`scaling.run_jobs`): one raw JSON per run,
`results/ablate/<variant>/seed-<k>.json` and `results/sweep/S<k>/seed-<j>.json` (the baseline
in `results/sweep/baseline/`), rebuilt into tables by `attnres report`. Run folders live under
`runs/ablate/<name>/seed-<k>` for both commands, named by what the run is, so a sweep collects
the finished baseline, Full and Block runs of an ablation instead of training them again (and
the reverse). Do not run both at once on the same run folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnres import units
from attnres.config import Config, ConfigError, ResidualConfig
from attnres.data import prepare_data
from attnres.experiments import compare, paper, report, scaling
from attnres.train.build import build_model

EXPERIMENTS = ("ablate", "sweep")
DEPTH_HEADS = 16    # H of the multihead row; the nearest divisor of d_model is used
SWA_WINDOW = 8      # W of the SWA row: the embedding plus the 8 most recent outputs
SWEEP_SIZES = (1, 2, 4, 8, 16, 32)
FULL = ResidualConfig("full")
BLOCK = ResidualConfig("block", block_size=4)

# Table 4 in the paper's order of sections: baseline, Full and its ablations, Block and its
# ablations, the other residual mechanisms; labels and [AR] values in `paper.TABLE4`.
VARIANTS: dict[str, ResidualConfig] = {
    "prenorm": ResidualConfig("prenorm"),
    "full": FULL,
    "full-input-query": replace(FULL, query="input_dependent"),
    "full-static-mixing": replace(FULL, mixing="static"),
    "full-sigmoid": replace(FULL, kernel="sigmoid"),
    "full-no-key-norm": replace(FULL, key_norm="none"),
    "swa": replace(FULL, window=SWA_WINDOW),
    "block": BLOCK,
    "block-multihead": replace(BLOCK, heads=DEPTH_HEADS),  # fitted to d_model: `variant_residual`
    "block-no-key-norm": replace(BLOCK, key_norm="none"),
    "denseformer": ResidualConfig("denseformer"),
    "mhc": ResidualConfig("mhc"),
}


def depth_heads(d_model: int, target: int = DEPTH_HEADS) -> int:
    """The divisor of d_model nearest to `target` (the larger one on a tie)."""
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
    return min(divisors, key=lambda h: (abs(h - target), -h))


def variant_residual(name: str, d_model: int) -> ResidualConfig:
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    residual = VARIANTS[name]
    return replace(residual, heads=depth_heads(d_model)) if residual.heads > 1 else residual


def sweep_arm(block_size: int | None) -> str:
    return "prenorm" if block_size is None else f"S{block_size}"


def sweep_residual(block_size: int | None) -> ResidualConfig:
    """The baseline for None; S = 1 and S = 4 are exactly the `full` and `block` variants."""
    if block_size is None:
        return VARIANTS["prenorm"]
    return FULL if block_size == 1 else replace(BLOCK, block_size=block_size)


def sweep_run_name(block_size: int | None) -> str:
    """The run folder of a sweep arm: the ablation's folder where the config is the same."""
    return {None: "prenorm", 1: "full", 4: "block"}.get(block_size, f"block-S{block_size}")


@dataclass
class AblateSettings:
    variants: tuple[str, ...] = tuple(VARIANTS)   # ablate
    block_sizes: tuple[int, ...] = SWEEP_SIZES    # sweep (the baseline always runs too)
    seeds: int = 2                  # seeds 0 .. seeds-1
    steps: int = 300
    d_model: int = 64
    n_layers: int = 16              # 32 sublayers, as the paper's ablation model
    data: str = "shakespeare"
    out: str = ""                   # "" = results/<experiment> (results/<experiment>-quick)
    runs: str = "runs/ablate"       # run folders of both commands (shared: see the docstring)
    device: str = "auto"
    dtype: str = "float32"
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 0.0                 # 0 = the config default
    eval_batches: int = 16          # validation windows of the final loss (same for every arm)
    overrides: list[str] = field(default_factory=list)
    in_process: bool = False        # train in this process instead of a spawned one (tests)
    workers: int = 1                # runs trained side by side (`scaling.run_jobs`)
    progress: bool = True
    quick: bool = False

    def size(self) -> scaling.Size:
        heads = max(1, self.d_model // scaling.HEAD_DIM)
        return scaling.Size(self.d_model, self.n_layers, heads, scaling.swiglu_width(self.d_model))


QUICK = dict(steps=6, d_model=16, batch_size=4, seq_len=32, eval_batches=2,
             runs="runs/ablate-quick", in_process=True, quick=True)


def settings(quick: bool = False, **changes: Any) -> AblateSettings:
    """Defaults (or the `--quick` ones: d = 16, still 32 sublayers, 6 steps) with `changes`
    applied; a change of None keeps the default."""
    base = AblateSettings(**QUICK) if quick else AblateSettings()
    return replace(base, **{k: v for k, v in changes.items() if v is not None})


def out_dir(s: AblateSettings, experiment: str) -> Path:
    return Path(s.out or f"results/{experiment}" + ("-quick" if s.quick else ""))


def run_config(s: AblateSettings, residual: ResidualConfig, seed: int) -> Config:
    """The shared backbone and budget with one arm's residual (then the user's overrides)."""
    size = s.size()
    base = Config()
    model = replace(base.model, d_model=size.d_model, n_layers=size.n_layers,
                    n_heads=size.n_heads, n_kv_heads=size.n_heads, d_ff=size.d_ff,
                    max_seq_len=s.seq_len)
    train = replace(base.train, eval_batches=s.eval_batches, analysis=False,
                    ckpt_every=max(1, min(500, s.steps // 10)))
    cs = compare.CompareSettings(backbone="dense", preset="base", steps=s.steps, seeds=(seed,),
                                 data=s.data, device=s.device, dtype=s.dtype,
                                 batch_size=s.batch_size, seq_len=s.seq_len, lr=s.lr,
                                 overrides=list(s.overrides), progress=s.progress)
    cfg = compare.experiment_config(cs, residual, seed, model=model, train=train)
    # two evaluations: half way and at the end
    return replace(cfg, train=replace(cfg.train, eval_every=max(1, s.steps // 2)))


@dataclass
class Arm:
    experiment: str
    name: str                       # variant (ablate) or S<k> / baseline (sweep)
    run_name: str                   # run folder under s.runs
    residual: ResidualConfig
    label: str


def arms(s: AblateSettings, experiment: str) -> list[Arm]:
    if experiment == "ablate":
        heads = depth_heads(s.d_model)
        return [Arm("ablate", v, v, variant_residual(v, s.d_model),
                    paper.TABLE4[v][0].format(heads=heads)) for v in s.variants]
    n_sub = units.sublayers_from_layers(s.n_layers)
    for k in s.block_sizes:
        if not 1 <= k <= n_sub:
            raise ConfigError(f"block size {k} must be in 1..{n_sub} (the model's sublayers)")
    out = []
    for k in (None, *sorted(set(s.block_sizes))):
        label = "Baseline (PreNorm)" if k is None else \
            f"Block S = {k} (N = {units.num_blocks(n_sub, k)})" + (", = Full" if k == 1 else "")
        out.append(Arm("sweep", sweep_arm(k), sweep_run_name(k), sweep_residual(k), label))
    return out


def run_record(s: AblateSettings, arm: Arm, seed: int, cfg: Config, result: dict[str, Any],
               vocab_size: int, corpus: str, resumed_from: int) -> dict[str, Any]:
    """The scaling record (loss, budget, compute, throughput, memory, config) of the run, filed
    under this experiment, with the residual settings that define the arm."""
    size = s.size()
    rec = scaling.run_record(scaling.Run(size, arm.name, seed, s.steps, cfg), result, vocab_size,
                             corpus, resumed_from)
    r = cfg.residual
    block = r.sublayers_per_block(size.n_sublayers) or None
    rec.update(experiment=arm.experiment, residual=r.kind, block_size=block, label=arm.label,
               n_blocks=units.num_blocks(size.n_sublayers, block) if block else None,
               depth_heads=r.heads if r.is_attnres else None,
               in_process=s.in_process)  # then peak RSS is the shared process's
    return rec


def run(s: AblateSettings, experiment: str, dry_run: bool = False) -> report.Report | None:
    """Train every missing run of `experiment` (ablate | sweep), then rebuild the report in its
    results folder (None for a dry run, which only prints the plan)."""
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")
    if s.seeds < 1 or s.steps < 1:
        raise ConfigError(f"need seeds >= 1 and steps >= 1, got {s.seeds}, {s.steps}")
    out = out_dir(s, experiment)
    todo = arms(s, experiment)
    if not todo:
        raise ConfigError(f"{experiment}: no arms to train")
    configs = {(a.name, seed): run_config(s, a.residual, seed) for a in todo for seed in range(s.seeds)}
    first = configs[(todo[0].name, 0)]
    data = prepare_data(first.data.source, first.data.tokenizer, first.data.vocab_size or None,
                        first.data.val_fraction, first.data.cache_dir,
                        workers=first.data.workers, text_column=first.data.text_column)
    vocab = data.tokenizer.vocab_size
    print(format_plan(s, experiment, todo, configs, vocab), flush=True)
    if dry_run:
        return None
    jobs = []
    for seed in range(s.seeds):  # seed by seed, so a stopped suite already holds whole seeds
        for a in todo:
            cfg = configs[(a.name, seed)]
            jobs.append(scaling.Job(
                f"{experiment} {a.name} seed {seed}", cfg, s.steps,
                out / a.name / f"seed-{seed}.json", Path(s.runs) / a.run_name / f"seed-{seed}",
                lambda result, start, a=a, seed=seed, cfg=cfg:
                    run_record(s, a, seed, cfg, result, vocab, data.corpus_name, start)))
    trained, skipped = scaling.run_jobs(jobs, s.in_process, s.workers)
    print(f"finished {trained} runs, {skipped} already done", flush=True)
    return report.write_report(out)


def format_plan(s: AblateSettings, experiment: str, todo: list[Arm], configs: dict, vocab_size: int) -> str:
    size = s.size()
    tokens = s.steps * s.batch_size * s.seq_len
    lines = [f"{experiment}: {len(todo)} arms × {s.seeds} seeds = {len(todo) * s.seeds} runs on "
             f"{size.name} (d {size.d_model}, {size.n_layers} layers = {size.n_sublayers} sublayers, "
             f"{size.n_heads} heads, d_ff {size.d_ff}), {s.steps} steps × {s.batch_size * s.seq_len:,} "
             f"tokens = {tokens:,} tokens per run",
             "| arm | what | residual | params |", "|---|---|---|---:|"]
    for a in todo:
        params = build_model(configs[(a.name, 0)], vocab_size).num_params()
        lines.append(f"| {a.name} | {a.label} | {describe(a.residual)} | {params:,} |")
    return "\n".join(lines)


def describe(residual: ResidualConfig) -> str:
    """The residual's kind and the keys that differ from that kind's defaults."""
    default = ResidualConfig(residual.kind)
    changed = [f"{f}={getattr(residual, f)}" for f in residual.__dataclass_fields__
               if f != "kind" and getattr(residual, f) != getattr(default, f)]
    return " ".join([residual.kind, *changed])
