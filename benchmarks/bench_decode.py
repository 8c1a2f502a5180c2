"""Decode tokens/s and cache bytes: kimi-linear vs dense at growing contexts (attnres.bench.decode)."""

import argparse

from attnres.bench.decode import format_decode_table, run_decode_bench
from attnres.train.build import resolve_device

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print(format_decode_table(run_decode_bench(preset=a.preset, device=resolve_device(a.device), quick=a.quick)))
