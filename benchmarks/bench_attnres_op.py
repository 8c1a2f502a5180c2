"""Depth-attention read, naive vs recompute vs two-phase: `python benchmarks/bench_attnres_op.py`."""

import argparse

import torch

from attnres.bench.op import format_op_table, run_op_bench

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, two timed runs")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads (0: torch's default); on a busy machine 1 avoids the stalls that "
        "idle-spinning worker threads add to the many small per-source ops",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_op_bench(device=args.device, dtype=DTYPES[args.dtype], quick=args.quick)
    r = rows[0]
    print(
        f"sources [B, T, d] = [{r['batch']}, {r['seq']}, {r['d']}], {r['dtype']}, {r['device']}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(format_op_table(rows))


if __name__ == "__main__":
    main()
