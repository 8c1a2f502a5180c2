"""Decode speed: `python benchmarks/bench_decode.py` (kimi-linear vs dense at growing contexts,
cache bytes) or `python benchmarks/bench_decode.py --residual --threads 1` (prenorm / Block /
Full on dense `small`, batch 1, greedy with the KV cache, against the training-path reads)."""

import argparse

import torch

from attnres.bench.decode import (format_decode_table, format_residual_decode_table,
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
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    if a.residual:
        print(format_residual_decode_table(run_residual_decode_bench(
            preset=a.preset or "small", new_tokens=a.new_tokens, rounds=a.rounds, device=dev,
            reference_reads=True, quick=a.quick)))
    else:
        print(format_decode_table(run_decode_bench(preset=a.preset or "tiny", device=dev,
                                                   quick=a.quick)))
