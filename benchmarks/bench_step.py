"""Training-step time and peak memory: baseline vs Block vs Full AttnRes (see attnres.bench.step).

--compile adds a compiled arm per variant (train.compile); --qk-clip instead times QK-Clip's
max-logit tracking on the baseline (off / exact / bound, docs/OPTIM.md#qk-clip-tracking-cost)."""

import argparse

import torch

from attnres.bench.step import (
    format_qk_clip_table,
    format_step_split_table,
    format_step_table,
    run_qk_clip_bench,
    run_step_bench,
)
from attnres.train.build import resolve_device

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compile", action="store_true", help="also a compiled arm per variant")
    p.add_argument("--variants", default="prenorm,block,full")
    p.add_argument("--qk-clip", action="store_true",
                   help="QK-Clip tracking arms (off, exact, bound, bound-all-over) instead")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.qk_clip:
        shape = dict(preset="tiny", batch=2, seq=32) if a.quick else dict(preset=a.preset)
        rows = run_qk_clip_bench(device=device, repeats=a.repeats, **shape)
        print(format_qk_clip_table(rows))
    else:
        rows = run_step_bench(a.preset, variants=a.variants.split(","), device=device,
                              dtype=getattr(torch, a.dtype), repeats=a.repeats, quick=a.quick,
                              compile=a.compile)
        print(format_step_table(rows))
        print()
        print(format_step_split_table(rows))
