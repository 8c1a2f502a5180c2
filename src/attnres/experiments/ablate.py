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
from attnres.config import Config, ConfigError
from attnres.data import prepare_data
from attnres.experiments import compare, report, scaling
from attnres.train.build import build_model, residual_name

EXPERIMENTS = ("ablate", "sweep")
FULL = ["residual.kind=attnres", "attnres.mode=full"]
BLOCK = ["residual.kind=attnres", "attnres.mode=block", "attnres.block_size=4"]
DEPTH_HEADS = 16    # H of the multihead row; the nearest divisor of d_model is used
SWA_WINDOW = 8      # W of the SWA row: the embedding plus the 8 most recent outputs
SWEEP_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class Variant:
    label: str                  # the Table-4 row
    overrides: tuple[str, ...]  # config overrides on top of the shared backbone
    paper: float                # [AR] Table 4 val loss (docs/TARGETS.md#a3-table-4-ablations)


# Table 4 in the paper's order of sections: baseline, Full and its ablations, Block and its
# ablations, the other residual mechanisms. "{heads}" is filled with the nearest divisor of d.
VARIANTS: dict[str, Variant] = {
    "baseline": Variant("Baseline (PreNorm)", ("residual.kind=prenorm",), 1.766),
    "full": Variant("AttnRes Full", (*FULL,), 1.737),
    "full-input-query": Variant("Full w/ input-dependent query",
                                (*FULL, "attnres.query=input_dependent"), 1.731),
    "full-static-mixing": Variant("Full w/ input-independent mixing",
                                  (*FULL, "attnres.mixing=static"), 1.749),
    "full-sigmoid": Variant("Full w/ sigmoid", (*FULL, "attnres.kernel=sigmoid"), 1.741),
    "full-no-key-norm": Variant("Full w/o RMSNorm", (*FULL, "attnres.key_norm=none"), 1.743),
    "swa": Variant(f"SWA (W = 1 + {SWA_WINDOW})", (*FULL, f"attnres.window={SWA_WINDOW}"), 1.764),
    "block": Variant("AttnRes Block (S = 4)", (*BLOCK,), 1.746),
    "block-multihead": Variant("Block w/ multihead (H = {heads})", (*BLOCK, "attnres.heads={heads}"), 1.752),
    "block-no-key-norm": Variant("Block w/o RMSNorm", (*BLOCK, "attnres.key_norm=none"), 1.750),
    "denseformer": Variant("DenseFormer", ("residual.kind=denseformer",), 1.767),
    "mhc": Variant("mHC (m = 4)", ("residual.kind=mhc",), 1.747),
}
PAPER_BASELINE = VARIANTS["baseline"].paper
# [AR] Fig. 6 val loss by S, read from the figure (docs/TARGETS.md#a4-block-size-sweep)
PAPER_SWEEP = {1: 1.737, 2: 1.746, 4: 1.746, 8: 1.748, 16: 1.753, 32: 1.757}


def depth_heads(d_model: int, target: int = DEPTH_HEADS) -> int:
    """The divisor of d_model nearest to `target` (the larger one on a tie)."""
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
    return min(divisors, key=lambda h: (abs(h - target), -h))


def variant_overrides(name: str, d_model: int) -> list[str]:
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return [o.format(heads=depth_heads(d_model)) for o in VARIANTS[name].overrides]


def sweep_arm(block_size: int | None) -> str:
    return "baseline" if block_size is None else f"S{block_size}"


def sweep_overrides(block_size: int | None) -> list[str]:
    """Baseline for None; S = 1 and S = 4 are exactly the `full` and `block` variants."""
    if block_size is None:
        return list(VARIANTS["baseline"].overrides)
    if block_size == 1:
        return list(FULL)
    return [*BLOCK[:-1], f"attnres.block_size={block_size}"]


def sweep_run_name(block_size: int | None) -> str:
    """The run folder of a sweep arm: the ablation's folder where the config is the same."""
    return {None: "baseline", 1: "full", 4: "block"}.get(block_size, f"block-S{block_size}")


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


def run_config(s: AblateSettings, residual: list[str], seed: int) -> Config:
    """The shared backbone and budget plus one arm's residual overrides (then the user's)."""
    size = s.size()
    train = [f"model.d_model={size.d_model}", f"model.n_layers={size.n_layers}",
             f"model.n_heads={size.n_heads}", f"model.n_kv_heads={size.n_heads}",
             f"model.d_ff={size.d_ff}", f"model.max_seq_len={s.seq_len}",
             f"train.eval_every={max(1, s.steps // 2)}", f"train.eval_batches={s.eval_batches}",
             f"train.ckpt_every={max(1, min(500, s.steps // 10))}", "train.analysis=false"]
    cs = compare.CompareSettings(backbone="dense", preset="base", steps=s.steps, seeds=(seed,),
                                 data=s.data, device=s.device, dtype=s.dtype,
                                 batch_size=s.batch_size, seq_len=s.seq_len, lr=s.lr,
                                 overrides=train + residual + list(s.overrides), progress=s.progress)
    # compare's "baseline" arm only adds residual.kind=prenorm, which `residual` then replaces
    return compare.arm_config(cs, "baseline", seed)


@dataclass
class Arm:
    experiment: str
    name: str                       # variant (ablate) or S<k> / baseline (sweep)
    run_name: str                   # run folder under s.runs
    residual: list[str]
    label: str


def arms(s: AblateSettings, experiment: str) -> list[Arm]:
    if experiment == "ablate":
        heads = depth_heads(s.d_model)
        return [Arm("ablate", v, v, variant_overrides(v, s.d_model), VARIANTS[v].label.format(heads=heads))
                for v in s.variants]
    n_sub = units.sublayers_from_layers(s.n_layers)
    for k in s.block_sizes:
        if not 1 <= k <= n_sub:
            raise ConfigError(f"block size {k} must be in 1..{n_sub} (the model's sublayers)")
    out = []
    for k in (None, *sorted(set(s.block_sizes))):
        label = "Baseline (PreNorm)" if k is None else \
            f"Block S = {k} (N = {units.num_blocks(n_sub, k)})" + (", = Full" if k == 1 else "")
        out.append(Arm("sweep", sweep_arm(k), sweep_run_name(k), sweep_overrides(k), label))
    return out


def run_record(s: AblateSettings, arm: Arm, seed: int, cfg: Config, result: dict[str, Any],
               vocab_size: int, corpus: str, resumed_from: int) -> dict[str, Any]:
    """The scaling record (loss, budget, compute, throughput, memory, config) of the run, filed
    under this experiment, with the residual settings that define the arm."""
    size = s.size()
    rec = scaling.run_record(scaling.Run(size, arm.name, seed, s.steps, cfg), result, vocab_size,
                             corpus, resumed_from)
    kind = residual_name(cfg)
    block = cfg.attnres.block_size if kind == "block" else (1 if kind == "full" else None)
    rec.update(experiment=arm.experiment, residual=kind, block_size=block, label=arm.label,
               residual_overrides=arm.residual,
               n_blocks=units.num_blocks(size.n_sublayers, block) if block else None,
               depth_heads=cfg.attnres.heads if kind in ("full", "block") else None,
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
             "| arm | what | residual overrides | params |", "|---|---|---|---:|"]
    for a in todo:
        params = build_model(configs[(a.name, 0)], vocab_size).num_params()
        lines.append(f"| {a.name} | {a.label} | {' '.join(a.residual)} | {params:,} |")
    return "\n".join(lines)

