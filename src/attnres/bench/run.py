"""`attnres bench`: every benchmark table in one run, with the settings that produced it."""

from __future__ import annotations

import platform
import sys

import torch

from attnres.train.build import resolve_device

WHAT = ("op", "step", "kda", "moe", "decode", "data")


def run_benchmarks(what=("op", "step"), preset: str = "small", quick: bool = False,
                   device: str = "auto", dtype: str = "float32", data_mb=(30, 300),
                   data_workers=(1, 2), data_tokenizer: str = "byte") -> str:
    unknown = [w for w in what if w not in WHAT]
    if unknown:
        from attnres.config import ConfigError
        raise ConfigError(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(WHAT)}")
    dev = resolve_device(device)
    torch_dtype = getattr(torch, dtype)
    parts = [f"Command: `attnres bench {' '.join(sys.argv[2:])}`".rstrip(),
             f"Hardware: {platform.machine()}, {torch.get_num_threads()} torch threads, device {dev}"
             + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
             + f", torch {torch.__version__}.", ""]
    if "op" in what:
        from attnres.bench.op import format_op_table, run_op_bench
        rows = run_op_bench(device=dev, dtype=torch_dtype, quick=quick)
        r = rows[0]
        parts += [f"### Depth-attention op, forward + backward (B={r['batch']}, T={r['seq']}, d={r['d']}, "
                  f"{r['dtype']})", "", format_op_table(rows), ""]
    if "step" in what:
        from attnres.bench.step import format_step_split_table, format_step_table, run_step_bench
        rows = run_step_bench(preset=preset, device=dev, dtype=torch_dtype, quick=quick)
        r = rows[0]
        parts += [f"### Training step, `{r['preset']}` preset (B={r['batch']}, T={r['seq']}, "
                  f"{r['dtype']}, Muon + AdamW)", "", format_step_table(rows), "",
                  format_step_split_table(rows), ""]
    if "kda" in what:
        from attnres.bench.kda import format_kda_table, run_kda_bench
        from attnres.bench.kda import format_kda_scaling_table, run_kda_scaling_bench
        parts += ["### KDA: chunk vs recurrent, forward + backward", "",
                  format_kda_table(run_kda_bench(device=str(dev), quick=quick)), "",
                  "### KDA scaling in T", "",
                  format_kda_scaling_table(run_kda_scaling_bench(device=str(dev), quick=quick)), ""]
    if "moe" in what:
        from attnres.bench.moe import format_moe_table, run_moe_bench
        parts += ["### MoE dispatch vs a dense FFN of equal active parameters", "",
                  format_moe_table(run_moe_bench(device=str(dev), **({"tokens": 256, "repeats": 2} if quick else {}))), ""]
    if "decode" in what:
        from attnres.bench.decode import format_decode_table, run_decode_bench
        from attnres.bench.decode import (format_residual_decode_table,
                                          run_residual_decode_bench)
        parts += ["### Decode: kimi-linear vs dense, cache size and tokens/s", "",
                  format_decode_table(run_decode_bench(device=dev, quick=quick)), "",
                  f"### Decode: residual arms, dense `{preset}`, batch 1, greedy with the KV cache",
                  "", format_residual_decode_table(run_residual_decode_bench(
                      preset=preset, device=dev, reference_reads=True, quick=quick)), ""]
    if "data" in what:
        from attnres.bench.data import format_data_table, run_data_bench
        parts += ["### Data: tokenising a text corpus into the token cache (MB/s, peak memory)", "",
                  format_data_table(run_data_bench(data_mb, data_workers, data_tokenizer, quick)), ""]
    return "\n".join(parts)
