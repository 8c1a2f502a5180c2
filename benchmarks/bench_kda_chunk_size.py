"""chunk_kda forward + backward at the Kimi-Linear presets' training shapes, per chunk size C
(docs/BENCHMARKS.md#kda-chunk-size). Arms interleaved in one process; median of paired ratios."""

import argparse
import statistics
import time

import torch

from attnres.bench.kda import kda_inputs
from attnres.ops.kda import chunk_kda

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
    x = kda_inputs(B, T, H, K, K, a.device)
    sizes = [int(c) for c in a.chunk_sizes.split(",")]
    times = {C: [] for C in sizes}
    for i in range(a.repeats + 1):                       # round 0 warms up
        for C in sizes[i % len(sizes):] + sizes[:i % len(sizes)]:
            leaves = {n: t.detach().requires_grad_() for n, t in x.items()}
            t0 = time.perf_counter()
            o, _ = chunk_kda(**leaves, chunk_size=C)
            o.sum().backward()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times[C].append((time.perf_counter() - t0) * 1e3)
    print(f"chunk_kda forward + backward, B×T×H×K = {B}×{T}×{H}×{K}, {a.device}, "
          f"{torch.get_num_threads()} threads, {a.repeats} rounds\n")
    ref = 64 if 64 in times else sizes[-1]
    print(f"| C | ms (median) | paired time / C = {ref} |\n|---:|---:|---:|")
    base = times[ref]
    for C in sizes:
        ratio = statistics.median(t / b for t, b in zip(times[C], base))
        print(f"| {C} | {statistics.median(times[C]):.1f} | {ratio:.2f} |")
