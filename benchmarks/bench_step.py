"""Training-step time and peak memory: baseline vs Block vs Full AttnRes (see attnres.bench.step)."""

import argparse

import torch

from attnres.bench.step import format_step_split_table, format_step_table, run_step_bench
from attnres.train.build import resolve_device

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = run_step_bench(a.preset, device=resolve_device(a.device), dtype=getattr(torch, a.dtype),
                          repeats=a.repeats, quick=a.quick)
    print(format_step_table(rows))
    print()
    print(format_step_split_table(rows))
