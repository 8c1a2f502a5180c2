"""MoE FFN forward+backward time, sorted and naive dispatch vs a dense SwiGLU of equal active
parameters: `python benchmarks/bench_moe.py`."""

import argparse

import torch

from attnres.bench.moe import format_moe_table, run_moe_bench


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="256 tokens, two timed runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = dict(tokens=256, repeats=2) if args.quick else {}
    print(format_moe_table(run_moe_bench(device=args.device, **kw)))


if __name__ == "__main__":
    main()
