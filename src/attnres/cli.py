"""Command-line interface: `attnres compare | train | generate | convert | bench | scaling | ablate | sweep | report`.

Every command takes --device (default: CUDA when present) and --dtype. Errors the user can fix
(bad config key or value, bad data, bad or locked checkpoint or run folder, a path that cannot be
written) print one line on stderr and exit with status 2 (1 for a diverged run; 130 / 143 for a
run stopped by SIGINT / SIGTERM after saving); nothing already saved is touched
(docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype (autocast); master weights and AttnRes statistics stay fp32")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnres", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="train baseline vs Full vs Block AttnRes and report",
                       description="Train the baseline, Full and Block AttnRes with identical "
                       "initial weights, data and hyperparameters, and report paired deltas. "
                       "The defaults are the demo (docs/RESULTS.md section 1): dense tiny, "
                       "1,000 steps, seeds 0 1 2, peak LR 6e-3, two arms side by side.")
    # None = the CompareSettings default, so the demo's settings live in one place
    p.add_argument("--backbone", default=None, choices=("dense", "kimi-linear"),
                   help="default dense")
    p.add_argument("--preset", default=None, help="model preset: tiny | small | base (default tiny)")
    p.add_argument("--steps", type=int, default=None, help="default 1000")
    p.add_argument("--residual", default=None,
                   help="comma-separated arms, residual kinds: prenorm,full,block (default all "
                   "three; prenorm is the baseline)")
    p.add_argument("--block-size", type=int, default=None,
                   help="residual.block_size of the block arm: S, in sublayers (default 4)")
    p.add_argument("--seed", type=int, nargs="+", default=None, dest="seeds",
                   help="one or more seeds; each seed trains every variant (default 0 1 2)")
    p.add_argument("--data", default=None,
                   help="bundled 'shakespeare' (default), a text, .jsonl(.gz) or parquet file, or a folder of them (docs/DATA.md)")
    p.add_argument("--out", default=None, help="default runs/compare")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--seq-len", type=int, default=None, help="0 = the preset's context length (default)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak LR of every arm (default 6e-3, the tuned baseline LR of the tiny "
                   "presets; 0 = the config default optim.lr)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config override, applied to every arm (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help="train this many arms side by side, each in its own process with an "
                   "equal share of the CPU threads (default 2)")
    p.add_argument("--no-progress", action="store_true")
    _add_device_args(p)

    p = sub.add_parser("train", help="train one model from a TOML/YAML config")
    p.add_argument("--config", help="TOML, YAML or JSON file (sections: model, residual, optim, "
                   "sched, data, train, parallel)")
    p.add_argument("--preset", default=None, help="model.preset: tiny | small | base")
    p.add_argument("--steps", type=int, default=None, help="train.steps")
    p.add_argument("--seed", type=int, default=None, help="train.seed and train.data_seed")
    p.add_argument("--residual", default=None,
                   help="residual.kind: prenorm (default) | full | block | denseformer | mhc")
    p.add_argument("--block-size", type=int, default=None,
                   help="residual.block_size of --residual block: S, in sublayers (default 4)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--out", help="run folder (default: train.out_dir)")
    p.add_argument("--resume", help="checkpoint or run folder to continue from")
    p.add_argument("--init-from", metavar="DIR", default=None,
                   help="start from a pretrained model: a transformers Llama / Qwen3 folder "
                   "(converted to --residual) or an attnres_llama folder (train.init_from; "
                   "docs/HF.md#continued-training)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: train.device = auto)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--parallel", default=None, choices=("none", "dp", "fsdp"),
                   help="data parallelism under torchrun (default: parallel.mode = none); "
                   "see docs/DISTRIBUTED.md")
    p.add_argument("--pp", type=int, default=None, metavar="P",
                   help="pipeline parallelism over P ranks under torchrun --nproc-per-node P "
                   "(parallel.pp; default 1)")
    p.add_argument("--virtual-stages", type=int, default=None, metavar="V",
                   help="virtual stages per pipeline rank, interleaved 1F1B when V > 1 "
                   "(parallel.virtual_stages; default 1)")
    p.add_argument("--pp-cache", default=None, action=argparse.BooleanOptionalAction,
                   help="AttnRes cross-stage caching: only block increments travel "
                   "(parallel.pp_cache; default on)")
    p.add_argument("--microbatches", type=int, default=None, metavar="M",
                   help="pipeline micro-batches per step (parallel.microbatches; default: "
                   "the smallest M >= P dividing the batch that the schedule accepts)")
    p.add_argument("--compile", default=None, action=argparse.BooleanOptionalAction,
                   help="torch.compile each decoder layer's mixer and FFN (train.compile; "
                   "default off; docs/DISTRIBUTED.md#compile)")

    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint folder or run folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_device_args(p)

    p = sub.add_parser("convert", help="transformers Llama / Qwen3 / Kimi-Linear folders to "
                       "attnres and back",
                       description="--from-hf DIR: a Llama / Qwen3 / Kimi-Linear transformers "
                       "folder as an attnres model with the chosen residual (Full and Block start "
                       "with the source's logits), saved as an attnres_llama / "
                       "attnres_kimi_linear folder. --to-hf DIR: an attnres folder or training "
                       "checkpoint as transformers: prenorm as plain Llama / Qwen3 / Kimi-Linear, "
                       "AttnRes as the attnres model type (docs/HF.md).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="transformers model folder (config.json + "
                     "safetensors, sharded or not)")
    src.add_argument("--to-hf", metavar="DIR", help="attnres_llama / attnres_kimi_linear "
                     "folder, or an attnres checkpoint / run folder")
    p.add_argument("--residual", default="prenorm", choices=("prenorm", "full", "block"),
                   help="--from-hf: the residual of the converted model (default prenorm)")
    p.add_argument("--block-size", type=int, default=None,
                   help="residual.block_size of --residual block: S, in sublayers (default 4)")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the written weights (default float32)")

    p = sub.add_parser("bench", help="benchmarks: the depth-attention op and the training step")
    p.add_argument("--what", default="op,step", help="comma-separated: op, step, kda, moe, decode, data")
    p.add_argument("--data-mb", type=float, nargs="+", default=[30, 300],
                   help="data: sizes of the generated text corpora in MB (--quick: 2)")
    p.add_argument("--data-workers", type=int, nargs="+", default=[1, 2],
                   help="data: tokenising worker counts to measure")
    p.add_argument("--data-tokenizer", default="byte", choices=("byte", "bpe"))
    p.add_argument("--preset", default="small")
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); 1 is steadiest on a shared machine")
    _add_device_args(p)

    p = sub.add_parser("scaling", help="scaling ladder: baseline vs Full vs Block, fits L = A*C^-alpha",
                       description="Train a ladder of dense sizes x arms x seeds (resumable), fit "
                       "L = A*C^-alpha per arm and report the compute advantage. "
                       "`attnres scaling advantage ...` evaluates published or fitted coefficients.")
    p.add_argument("--sizes", type=int, default=None, help="ladder sizes (default 4; 4 tiny ones with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 2)")
    p.add_argument("--tokens-per-param", type=float, default=None,
                   help="training tokens per non-embedding parameter incl. the head (default 5)")
    p.add_argument("--residual", default=None,
                   help="comma-separated arms, residual kinds: prenorm,full,block (default all)")
    p.add_argument("--data", default=None, help="corpus, as for compare (default shakespeare)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (4 with --quick)")
    p.add_argument("--seq-len", type=int, default=None, help="default 256 (64 with --quick)")
    p.add_argument("--lr", type=float, default=None, help="peak LR (default: config default)")
    p.add_argument("--out", default=None, help="per-run result JSONs and report (default results/scaling)")
    p.add_argument("--runs", default=None, help="run folders with checkpoints (default runs/scaling)")
    _add_sweep_args(p, quick="tiny sizes, a few steps: about a minute",
                    dry_run="print the ladder and budgets, train nothing")
    scaling_sub = p.add_subparsers(dest="scaling_command")
    q = scaling_sub.add_parser("advantage", help="losses and compute advantage from fitted coefficients")
    q.add_argument("--baseline", required=True, metavar="A,ALPHA", help="baseline fit, e.g. 1.891,0.057")
    q.add_argument("--variant", required=True, action="append", metavar="[NAME=]A,ALPHA",
                   help="variant fit, e.g. block=1.870,0.058 (repeatable)")
    q.add_argument("--at", required=True, type=float, metavar="C", help="compute C0 in PFLOP/s-days")

    p = sub.add_parser("ablate", help="[AR] Table 4: residual variants on a 32-sublayer model",
                       description="Train the Table-4 variants (baseline, Full and its ablations, SWA, "
                       "Block and its ablations, DenseFormer, mHC) x seeds on one 16-layer dense model "
                       "(resumable) and report val loss, paired deltas and the paper's values.")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset (default all): prenorm, full, full-input-query, "
                   "full-static-mixing, full-sigmoid, full-no-key-norm, swa, block, block-multihead, "
                   "block-no-key-norm, denseformer, mhc")
    _add_ablate_args(p, "results/ablate")

    p = sub.add_parser("sweep", help="[AR] Fig. 6: Block AttnRes block size S sweep plus the baseline",
                       description="Train Block AttnRes with S = 1, 2, 4, 8, 16, 32 sublayers per block "
                       "and the baseline x seeds on the ablation model (resumable; reuses the ablation's "
                       "baseline, Full and Block runs) and report val loss vs S with a plot.")
    p.add_argument("--block-sizes", default=None, help="comma-separated S values (default 1,2,4,8,16,32)")
    _add_ablate_args(p, "results/sweep")

    p = sub.add_parser("report", help="rebuild the markdown tables from per-run result JSONs")
    p.add_argument("dir", help="results folder, e.g. results/scaling or results")
    p.add_argument("--no-write", action="store_true",
                   help="only print; do not rewrite DIR/report.md, summary.json and plots")
    return parser


def _one_line_warnings(command: str) -> None:
    """The package's own warnings (e.g. a block size above the depth) print as one line, like
    its errors; warnings from elsewhere (torch, ...) keep Python's format."""
    import warnings
    # the format in place before main() first ran (main may run more than once in a process)
    default = getattr(warnings.formatwarning, "python_default", warnings.formatwarning)

    def formatwarning(message, category, filename, lineno, line=None):
        if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
            return f"attnres {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)
    formatwarning.python_default = default
    warnings.formatwarning = formatwarning


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _one_line_warnings(args.command)
    from attnres.config import ConfigError
    from attnres.data import DataError
    from attnres.train.checkpoint import CheckpointError
    from attnres.train.runlock import RunLocked
    from attnres.train.trainer import TrainingDiverged, TrainingInterrupted
    try:
        return {"compare": _compare, "train": _train, "generate": _generate,
                "convert": _convert, "bench": _bench, "scaling": _scaling, "ablate": _ablate, "sweep": _ablate,
                "report": _report}[args.command](args)
    except (ConfigError, DataError, CheckpointError, RunLocked) as err:
        print(f"attnres {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"attnres {args.command}: error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        print(f"attnres {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # e.g. an out folder under /proc, or one that may not be written
        where = f"{err.filename}: " if err.filename else ""
        print(f"attnres {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnres {args.command}: interrupted", file=sys.stderr)
        return 130


def _compare(args) -> int:
    from attnres.experiments.compare import CompareSettings, format_table, run_compare
    given = {k: v for k, v in dict(
        backbone=args.backbone, preset=args.preset, steps=args.steps, block_size=args.block_size,
        data=args.data, out=args.out, batch_size=args.batch_size, seq_len=args.seq_len,
        lr=args.lr, workers=args.workers).items() if v is not None}
    if args.residual is not None:
        given["residuals"] = tuple(v.strip() for v in args.residual.split(",") if v.strip())
    if args.seeds is not None:
        given["seeds"] = tuple(args.seeds)
    settings = CompareSettings(device=args.device, dtype=args.dtype, overrides=args.set, **given)
    settings.progress = not args.no_progress and settings.workers == 1  # bars would interleave
    summary = run_compare(settings)
    print()
    print(format_table(summary))
    print(f"\nwrote {settings.out}/summary.json, report.md and plots")
    return 0


def _train(args) -> int:
    from attnres import config as config_mod
    from attnres.train.trainer import Trainer
    overrides = []
    for key, value in (("model.preset", args.preset), ("train.steps", args.steps),
                       ("train.seed", args.seed), ("train.data_seed", args.seed),
                       ("residual.kind", args.residual), ("residual.block_size", args.block_size),
                       ("train.init_from", args.init_from)):
        if value is not None:
            overrides.append(f"{key}={value}")
    overrides += list(args.set)  # --set wins over the flags above
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.dtype:
        overrides.append(f"train.dtype={args.dtype}")
    if args.parallel:
        overrides.append(f"parallel.mode={args.parallel}")
    for key, value in (("pp", args.pp), ("virtual_stages", args.virtual_stages),
                       ("microbatches", args.microbatches)):
        if value is not None:
            overrides.append(f"parallel.{key}={value}")
    if args.pp_cache is not None:
        overrides.append(f"parallel.pp_cache={str(args.pp_cache).lower()}")
    if args.compile is not None:
        overrides.append(f"train.compile={str(args.compile).lower()}")
    if args.resume:  # the checkpoint's config, changed only where that is safe (docs/RELIABILITY.md)
        from attnres.train.trainer import config_from_checkpoint
        saved, _, meta = config_from_checkpoint(args.resume)
        cfg = config_mod.load(args.config, overrides, base=meta["config"])
        config_mod.check_resume(saved, cfg)
    else:
        cfg = config_mod.load(args.config, overrides)
    if args.block_size is not None and cfg.residual.kind != "block":
        raise config_mod.ConfigError(f"--block-size applies to --residual block, got residual.kind "
                                     f"= {cfg.residual.kind}")
    try:
        trainer = Trainer(cfg, run_dir=args.out, resume=args.resume)
        result = trainer.train()
    finally:
        if cfg.parallel.mode != "none" or cfg.parallel.pp > 1:
            from attnres.parallel.distributed import cleanup
            cleanup()
    if not trainer.par.is_main:
        return 0
    print(f"val loss {result.val_loss:.4f}  val bpb {result.val_bpb:.4f}  "
          f"{result.tokens_per_s:,.0f} tokens/s  -> {result.run_dir}")
    return 0


def _generate(args) -> int:
    import torch
    from attnres.train.build import resolve_device
    from attnres.config import ConfigError
    from attnres.train.trainer import load_for_inference
    for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 0),
                             ("--temperature", args.temperature, 0),
                             ("--top-k", args.top_k, 1)):
        if value is not None and not value >= low:  # `not >=`: NaN fails too
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    device = resolve_device(args.device)
    model, tokenizer = load_for_inference(args.ckpt, device)
    ids = tokenizer.encode(args.prompt) or [tokenizer.encode("\n")[0]]
    room = model.cfg.max_seq_len - len(ids)
    if room <= 0:
        raise ConfigError(f"prompt is {len(ids)} tokens; the model's context is {model.cfg.max_seq_len}")
    idx = torch.tensor([ids], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" \
        else torch.autocast(device.type, enabled=False)
    with autocast:
        out = model.generate(idx, min(args.max_new_tokens, room), temperature=args.temperature,
                             top_k=args.top_k, generator=gen)
    print(tokenizer.decode(out[0].tolist()))
    return 0


def _convert(args) -> int:
    from attnres.config import ConfigError
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder")
    try:
        import torch

        from attnres.hf import convert
    except ImportError as err:
        raise ConfigError(f"convert needs transformers ({err.name} missing): pip install "
                          f"'attnres[hf]'") from None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if args.from_hf:
        model = convert.from_hf(args.from_hf, residual=args.residual, block_size=args.block_size)
        model.to(dtype).save_pretrained(out)
        copied = convert.copy_side_files(Path(args.from_hf), out)
        print(f"wrote {out}: {model.config.model_type}, residual {model.model.residual.describe()}"
              + (f", with {', '.join(copied)}" if copied else ""))
        return 0
    if args.residual != "prenorm" or args.block_size is not None:
        raise ConfigError("--residual and --block-size apply to --from-hf; --to-hf keeps the "
                          "model's own residual")
    if convert.is_transformers_folder(args.to_hf):
        model = convert.load_attnres(args.to_hf)
        tokenizer = None
    else:  # an attnres training checkpoint or run folder
        from attnres.train.trainer import load_for_inference
        backbone, tokenizer = load_for_inference(args.to_hf, torch.device("cpu"))
        model = convert.wrap(backbone)
    model_type = convert.to_hf(model.to(dtype), out)
    convert.copy_side_files(Path(args.to_hf), out)
    if tokenizer is not None and "json" in tokenizer.to_dict():  # BPE / tokenizer.json runs
        (out / "tokenizer.json").write_text(tokenizer.to_dict()["json"])
    print(f"wrote {out}: {model_type}")
    return 0


def _bench(args) -> int:
    import torch

    from attnres.bench.run import run_benchmarks
    from attnres.config import ConfigError
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    text = run_benchmarks(what=[w.strip() for w in args.what.split(",")], preset=args.preset,
                          quick=args.quick, device=args.device, dtype=args.dtype,
                          data_mb=args.data_mb, data_workers=args.data_workers,
                          data_tokenizer=args.data_tokenizer)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _in_process(args) -> bool | None:
    """--in-process, or False where --workers needs a process per run (even with --quick)."""
    return True if args.in_process else (False if args.workers > 1 else None)


def _scaling(args) -> int:
    if args.scaling_command == "advantage":
        return _scaling_advantage(args)
    from attnres.experiments.scaling import ARMS, run_scaling, settings
    arms = None if args.residual is None else tuple(v.strip() for v in args.residual.split(",") if v.strip())
    s = settings(quick=args.quick, sizes=args.sizes, seeds=args.seeds,
                 tokens_per_param=args.tokens_per_param, arms=arms or ARMS, data=args.data,
                 batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, out=args.out,
                 runs=args.runs, device=args.device, dtype=args.dtype, overrides=list(args.set),
                 in_process=_in_process(args), workers=args.workers,
                 progress=not args.no_progress and args.workers == 1)  # bars would interleave
    rep = run_scaling(s, dry_run=args.dry_run)
    if rep is not None:
        print()
        print(rep.markdown)
        print(f"wrote {s.out}/report.md, summary.json and scaling.png")
    return 0


def _parse_fit(text: str, flag: str) -> tuple[str | None, float, float]:
    from attnres.config import ConfigError
    name, _, coeffs = text.rpartition("=")
    try:
        A, alpha = (float(x) for x in coeffs.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected [NAME=]A,ALPHA, e.g. 1.891,0.057") from None
    if A <= 0 or alpha <= 0:
        raise ConfigError(f"{flag} {text!r}: A and ALPHA must be > 0")
    return name or None, A, alpha


def _scaling_advantage(args) -> int:
    from attnres.config import ConfigError
    from attnres.experiments import fit
    if args.at <= 0:
        raise ConfigError(f"--at {args.at}: compute must be > 0 (PFLOP/s-days)")
    _, A_b, alpha_b = _parse_fit(args.baseline, "--baseline")
    C0 = args.at
    print(f"baseline: L = {A_b:g}·C^-{alpha_b:g}; L({C0:g}) = {fit.loss_at(A_b, alpha_b, C0):.4f}")
    for i, text in enumerate(args.variant):
        name, A, alpha = _parse_fit(text, "--variant")
        name = name or (f"variant {i + 1}" if len(args.variant) > 1 else "variant")
        loss = fit.loss_at(A, alpha, C0)
        c_base = fit.compute_for_loss(A_b, alpha_b, loss)
        adv = fit.advantage((A_b, alpha_b), (A, alpha), C0)
        print(f"{name}: L = {A:g}·C^-{alpha:g}; L({C0:g}) = {loss:.4f}; the baseline reaches "
              f"{loss:.4f} at C = {c_base:.2f} -> compute advantage {adv:.2f}× ({adv:.3f})")
    return 0


def _add_ablate_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 2)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; 6 with --quick)")
    p.add_argument("--d-model", type=int, default=None,
                   help="model width (default 64; 16 with --quick); 16 layers, heads of 16 channels")
    p.add_argument("--data", default=None, help="corpus, as for compare (default shakespeare)")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (4 with --quick)")
    p.add_argument("--seq-len", type=int, default=None, help="default 128 (32 with --quick)")
    p.add_argument("--lr", type=float, default=None, help="peak LR for every arm (default: config default)")
    p.add_argument("--out", default=None, help=f"per-run result JSONs and report (default {out}; "
                   f"{out}-quick with --quick)")
    p.add_argument("--runs", default=None, help="run folders, shared by ablate and sweep "
                   "(default runs/ablate; runs/ablate-quick with --quick)")
    _add_sweep_args(p, quick="tiny width, a few steps: under a minute",
                    dry_run="print the runs, train nothing")


def _add_sweep_args(p: argparse.ArgumentParser, quick: str, dry_run: str) -> None:
    """The options every resumable sweep (scaling, ablate, sweep) shares."""
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config override, applied to every run (repeatable)")
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--dry-run", action="store_true", help=dry_run)
    p.add_argument("--in-process", action="store_true",
                   help="train each run in this process instead of a fresh one (faster start; "
                   "the default with --quick)")
    p.add_argument("--workers", type=int, default=1,
                   help="train this many runs side by side, each in its own process with an equal "
                   "share of the CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    _add_device_args(p)


def _ablate(args) -> int:
    from attnres.config import ConfigError
    from attnres.experiments.ablate import run, settings

    def names(text):
        return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())

    changes = {}
    if args.command == "ablate":
        changes["variants"] = names(args.variants)
    elif args.block_sizes is not None:
        try:
            changes["block_sizes"] = tuple(int(v) for v in names(args.block_sizes))
        except ValueError:
            raise ConfigError(f"--block-sizes {args.block_sizes!r}: expected integers, e.g. 1,2,4") from None
    s = settings(quick=args.quick, seeds=args.seeds, steps=args.steps, d_model=args.d_model,
                 data=args.data, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                 out=args.out, runs=args.runs, device=args.device, dtype=args.dtype,
                 overrides=list(args.set), in_process=_in_process(args),
                 workers=args.workers, progress=not args.no_progress and args.workers == 1,
                 **changes)
    rep = run(s, args.command, dry_run=args.dry_run)
    if rep is not None:
        print()
        print(rep.markdown)
        print(f"wrote {', '.join(str(f) for f in rep.files)}")
    return 0


def _report(args) -> int:
    from attnres.experiments.report import ReportError, build_report, write_report
    try:
        rep = build_report(args.dir) if args.no_write else write_report(args.dir)
    except ReportError as err:
        print(f"attnres report: error: {err}", file=sys.stderr)
        return 2
    print(rep.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
