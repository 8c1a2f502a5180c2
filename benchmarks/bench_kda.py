"""KDA throughput: `python benchmarks/bench_kda.py` (chunkwise vs recurrent, forward+backward) or
`python benchmarks/bench_kda.py --scaling --threads 1` (time per token in T, K = V = 64, against
the former chunking and the recurrence)."""

import argparse

import torch

from attnres.bench.kda import (format_kda_scaling_table, format_kda_table, run_kda_bench,
                               run_kda_scaling_bench)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scaling", action="store_true", help="time per token at T = 512..8192")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="short sequences, one timed run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scaling:
        print(format_kda_scaling_table(run_kda_scaling_bench(device=args.device, quick=args.quick)))
    else:
        print(format_kda_table(run_kda_bench(device=args.device, quick=args.quick)))


if __name__ == "__main__":
    main()
