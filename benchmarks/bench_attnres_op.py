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
    args = parser.parse_args()
    rows = run_op_bench(device=args.device, dtype=DTYPES[args.dtype], quick=args.quick)
    r = rows[0]
    print(f"sources [B, T, d] = [{r['batch']}, {r['seq']}, {r['d']}], {r['dtype']}, {r['device']}")
    print(format_op_table(rows))


if __name__ == "__main__":
    main()
