"""Command-line interface: `attnres compare | train | generate | bench`.

Every command takes --device (default: CUDA when present) and --dtype. Errors the user can fix
(bad config key, bad data, bad checkpoint) print one line on stderr and exit with status 2 (1 for a
diverged run); nothing already saved is touched.
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

    p = sub.add_parser("compare", help="train baseline vs Full vs Block AttnRes and report")
    p.add_argument("--backbone", default="dense", choices=("dense", "kimi-linear"))
    p.add_argument("--preset", default="small", help="model preset: tiny | small | base")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", default="baseline,full,block",
                   help="comma-separated subset of baseline,full,block")
    p.add_argument("--block-size", type=int, default=4, help="Block AttnRes S, in sublayers")
    p.add_argument("--seed", type=int, nargs="+", default=[0], dest="seeds",
                   help="one or more seeds; each seed trains every variant")
    p.add_argument("--data", default="shakespeare",
                   help="bundled 'shakespeare', a text file, a folder of text files or a .jsonl")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=0, help="0 = the preset's context length")
    p.add_argument("--lr", type=float, default=0.0, help="peak LR (0 = config default 3e-3)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config override, applied to every arm (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    _add_device_args(p)

    p = sub.add_parser("train", help="train one model from a TOML/YAML config")
    p.add_argument("--config", help="TOML or YAML file (sections: model, residual, attnres, optim, sched, data, train)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--out", help="run folder (default: train.out_dir)")
    p.add_argument("--resume", help="checkpoint or run folder to continue from")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: train.device = auto)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))

    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint folder or run folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    _add_device_args(p)

    p = sub.add_parser("bench", help="benchmarks: the depth-attention op and the training step")
    p.add_argument("--what", default="op,step", help="comma-separated: op, step, kda, moe, decode")
    p.add_argument("--preset", default="small")
    p.add_argument("--quick", action="store_true", help="tiny shapes, seconds")
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    _add_device_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from attnres.config import ConfigError
    from attnres.data import DataError
    from attnres.train.checkpoint import CheckpointError
    from attnres.train.trainer import TrainingDiverged
    try:
        return {"compare": _compare, "train": _train, "generate": _generate,
                "bench": _bench}[args.command](args)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"attnres {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"attnres {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"attnres {args.command}: interrupted", file=sys.stderr)
        return 130


def _compare(args) -> int:
    from attnres.experiments.compare import CompareSettings, format_table, run_compare
    settings = CompareSettings(
        backbone=args.backbone, preset=args.preset, steps=args.steps,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        block_size=args.block_size, seeds=tuple(args.seeds), data=args.data, out=args.out,
        device=args.device, dtype=args.dtype, batch_size=args.batch_size, seq_len=args.seq_len,
        lr=args.lr, overrides=args.set, progress=not args.no_progress)
    summary = run_compare(settings)
    print()
    print(format_table(summary))
    print(f"\nwrote {settings.out}/summary.json, report.md and plots")
    return 0


def _train(args) -> int:
    from attnres import config as config_mod
    from attnres.train.trainer import Trainer
    overrides = list(args.set)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.dtype:
        overrides.append(f"train.dtype={args.dtype}")
    cfg = config_mod.load(args.config, overrides)
    trainer = Trainer(cfg, run_dir=args.out, resume=args.resume)
    result = trainer.train()
    print(f"val loss {result.val_loss:.4f}  val bpb {result.val_bpb:.4f}  "
          f"{result.tokens_per_s:,.0f} tokens/s  -> {result.run_dir}")
    return 0


def _generate(args) -> int:
    import torch
    from attnres.train.build import resolve_device
    from attnres.train.trainer import load_for_inference
    device = resolve_device(args.device)
    model, tokenizer = load_for_inference(args.ckpt, device)
    ids = tokenizer.encode(args.prompt) or [tokenizer.encode("\n")[0]]
    room = model.cfg.max_seq_len - len(ids)
    if room <= 0:
        from attnres.config import ConfigError
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


def _bench(args) -> int:
    from attnres.bench.run import run_benchmarks
    text = run_benchmarks(what=[w.strip() for w in args.what.split(",")], preset=args.preset,
                          quick=args.quick, device=args.device, dtype=args.dtype)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
