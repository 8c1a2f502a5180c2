"""Data benchmark: tokenising a generated text corpus into the token cache, MB/s and peak memory.

Each measurement runs `prepare_data` in a fresh Python process, so its peak resident memory is
that of one preparation alone: the process's own peak (`getrusage(RUSAGE_SELF)`), beside its
peak before preparing (the interpreter with torch and numpy imported), and the largest worker's
(`RUSAGE_CHILDREN`). A worker pool's start (about a second: each worker imports the package)
is inside the timed span. The corpus is one plain text file of random words,
the case that used to be read whole into memory.
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_WORDS = ("the king and queen of denmark speak to their court about love death honour and the "
          "ghost that walks upon the platform at night whilst rosencrantz guildenstern polonius "
          "ophelia laertes horatio marcellus bernardo francisco fortinbras osric yorick").split()


def write_corpus(path: Path, mb: float, seed: int = 0) -> int:
    """A text file of about `mb` MB: 1 MB of random lines, varied per copy, written repeatedly."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) for _ in range(16000)]
    block = "\n".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        n, i = 0, 0
        while n < mb * 1e6:
            part = f"{i}\n{block}\n"
            f.write(part)
            n += len(part)
            i += 1
    return path.stat().st_size


def _child(source: str, cache_dir: str, kind: str, workers: int) -> None:
    from attnres.data import cache, prepare_data

    cache.POOL_MIN_BYTES = 0  # measure the pool at every size, even --quick's few MB
    with open("/proc/self/status") as f:
        start_rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports' peak, KiB
    start = time.perf_counter()
    data = prepare_data(source, kind, None, 0.05, cache_dir, workers=workers, progress=False)
    wall = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"wall_s": wall, "before_mb": before, "start_mb": start_rss, "peak_mb": peak,
                      "worker_peak_mb": workers_peak,
                      "tokens": int(len(data.train) + len(data.val))}))


def run_data_bench(sizes_mb=(30, 300), workers=(1, 2), kind: str = "byte", quick: bool = False) -> list[dict]:
    if quick:
        sizes_mb = (2,)
    rows = []
    with tempfile.TemporaryDirectory(prefix="attnres-bench-data-") as tmp:
        for mb in sizes_mb:
            corpus = Path(tmp) / f"corpus-{mb}mb.txt"
            n_bytes = write_corpus(corpus, mb)
            for w in workers:
                cache_dir = Path(tmp) / f"cache-{mb}-{w}"
                code = ("import sys; from attnres.bench.data import _child; "
                        "_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))")
                out = subprocess.run([sys.executable, "-c", code, str(corpus), str(cache_dir), kind, str(w)],
                                     capture_output=True, text=True, check=False)
                if out.returncode:
                    raise RuntimeError(f"data benchmark child failed: {out.stderr.strip().splitlines()[-1:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"corpus_mb": n_bytes / 1e6, "workers": w, "kind": kind,
                             "mb_per_s": n_bytes / 1e6 / r["wall_s"], **r})
    return rows


def format_data_table(rows: list[dict]) -> str:
    lines = ["| corpus (MB) | tokenizer | workers | MB/s | main RSS at start (MB) | main peak before "
             "preparing (MB) | main peak (MB) | largest worker peak (MB) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        worker = f"{r['worker_peak_mb']:.0f}" if r["worker_peak_mb"] > 0 else "-"
        lines.append(f"| {r['corpus_mb']:.0f} | {r['kind']} | {r['workers']} | {r['mb_per_s']:.1f} "
                     f"| {r['start_mb']:.0f} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {worker} |")
    return "\n".join(lines)
