"""KDA forward+backward throughput, chunkwise vs recurrent: `python benchmarks/bench_kda.py`."""

import argparse

from attnres.bench.kda import format_kda_table, run_kda_bench


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="short sequences, one timed run")
    args = parser.parse_args()
    print(format_kda_table(run_kda_bench(device=args.device, quick=args.quick)))


if __name__ == "__main__":
    main()
