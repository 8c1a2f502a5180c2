"""The depth-attention benchmark helpers: the memory probes measure what they claim."""

from __future__ import annotations

import torch

from attnres.bench.memory import measure_peak, saved_tensor_bytes
from attnres.bench.op import IMPL_ORDER, format_op_table, run_op_bench

MB = 10 * 2**20


def test_measure_peak_reads_a_known_allocation():
    kept = []

    def fn():
        kept.append(torch.ones(MB // 4))  # 10 MiB of fp32, kept alive past fn
        tmp = torch.ones(MB // 8)  # plus a 5 MiB temporary, freed before the end
        del tmp

    peak = measure_peak(fn, "cpu")
    assert abs(peak - 1.5 * MB) <= 0.1 * 1.5 * MB
    # Freed temporaries do not raise the level: a second probe sees only its own allocation.
    assert abs(measure_peak(lambda: kept.append(torch.ones(MB // 4)), "cpu") - MB) <= 0.1 * MB


def test_saved_tensor_bytes_counts_storages_once_and_skips_excluded():
    x = torch.randn(1000, requires_grad=True)
    # exp saves its result (4000 B); mul by x saves both operands: x (excluded) and exp(x) again.
    assert saved_tensor_bytes(lambda: x.exp() * x, exclude=[x]) == 4000
    assert saved_tensor_bytes(lambda: x.exp() * x) == 8000


def test_quick_op_bench_smoke():
    rows = run_op_bench(quick=True)
    keys = {"impl", "n", "fwd_bwd_ms", "spread_ms", "fwd_peak_bytes", "bwd_peak_bytes", "saved_bytes"}
    assert rows and all(keys <= set(r) for r in rows)
    assert {r["impl"] for r in rows} == set(IMPL_ORDER)
    for n in {r["n"] for r in rows}:
        by_impl = {r["impl"]: r for r in rows if r["n"] == n}
        assert by_impl["recompute"]["saved_bytes"] < by_impl["naive"]["saved_bytes"]
        assert by_impl["recompute"]["bwd_peak_bytes"] < by_impl["naive"]["bwd_peak_bytes"]
    table = format_op_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| naive |" in table
