"""chunk_kda forward + backward at the Kimi-Linear presets' training shapes, per chunk size C
(docs/BENCHMARKS.md#kda-chunk-size; attnres.bench.kda.run_kda_chunk_size_bench)."""

import argparse

import torch

from attnres.bench.kda import format_kda_chunk_size_table, run_kda_chunk_size_bench

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="8,256,8,32", help="B,T,H,K (K = V); default: `small`")
    p.add_argument("--chunk-sizes", default="16,32,64")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    B, T, H, K = (int(s) for s in a.shape.split(","))
    rows = run_kda_chunk_size_bench([int(c) for c in a.chunk_sizes.split(",")], B, T, H, K,
                                    device=a.device, repeats=a.repeats)
    print(format_kda_chunk_size_table(rows))
