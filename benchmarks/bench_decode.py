"""Decode speed: `python benchmarks/bench_decode.py` (kimi-linear vs dense at growing contexts,
cache bytes) or `python benchmarks/bench_decode.py --residual --threads 1` (prenorm / Block /
Full on dense `small`, batch 1, greedy with the KV cache, against the training-path reads);
`--residual --kernels` counts the aten calls per decoded token of each arm instead."""

import argparse

import torch

from attnres.bench.decode import (count_decode_kernels, format_decode_kernels_table,
                                  format_decode_table, format_residual_decode_table,
                                  run_decode_bench, run_residual_decode_bench)
from attnres.train.build import resolve_device

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default=None, help="default: tiny (backbones), small (--residual)")
    p.add_argument("--device", default="auto")
    p.add_argument("--residual", action="store_true", help="the residual arms' decode table")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--kernels", action="store_true",
                   help="with --residual: aten calls per decoded token (torch.profiler)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    if a.residual and a.kernels:
        print(format_decode_kernels_table(count_decode_kernels(
            preset=a.preset or ("tiny" if a.quick else "small"), device=dev,
            new_tokens=4 if a.quick else 50)))
    elif a.residual:
        print(format_residual_decode_table(run_residual_decode_bench(
            preset=a.preset or "small", new_tokens=a.new_tokens, rounds=a.rounds, device=dev,
            reference_reads=True, quick=a.quick)))
    else:
        print(format_decode_table(run_decode_bench(preset=a.preset or "tiny", device=dev,
                                                   quick=a.quick)))
