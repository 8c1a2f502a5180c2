"""`attnres bench --quick` runs every benchmark end to end (numbers are not asserted: CI is noisy)."""

import pytest

from attnres.bench.run import WHAT, run_benchmarks


@pytest.mark.slow
def test_every_benchmark_runs_quick():
    text = run_benchmarks(what=WHAT, quick=True, device="cpu")
    for heading in ("Depth-attention op", "Training step", "KDA", "MoE", "Decode", "Data"):
        assert heading in text
    assert "| block (S=4) |" in text and "| kimi-linear (tiny) |" in text
    assert "KDA scaling in T" in text and "| block (reference reads) |" in text


def test_residual_decode_bench_rows_and_same_tokens():
    from attnres.bench.decode import format_residual_decode_table, run_residual_decode_bench
    rows = run_residual_decode_bench(reference_reads=True, quick=True)
    assert [r["arm"] for r in rows] == ["prenorm", "block", "block (reference reads)", "full",
                                        "full (reference reads)"]
    assert rows[0]["ratio"] == 1.0 and rows[0]["same_tokens"] is None
    assert rows[1]["same_tokens"] is True and rows[3]["same_tokens"] is True
    assert "| full (reference reads) |" in format_residual_decode_table(rows)


def test_kda_scaling_bench_rows():
    from attnres.bench.kda import format_kda_scaling_table, run_kda_scaling_bench
    rows = run_kda_scaling_bench(quick=True)
    assert [r["T"] for r in rows] == [64, 128]
    assert all(r["chunk_fwd_us"] > 0 and r["former_fwdbwd_us"] > 0 for r in rows)
    assert "recurrent fwd / chunk fwd" in format_kda_scaling_table(rows)


def test_step_bench_splits_each_step_into_its_parts():
    from attnres.bench.step import STEP_PARTS, format_step_split_table, run_step_bench
    rows = run_step_bench(quick=True)
    assert [r["variant"] for r in rows] == ["prenorm", "block", "full"]
    for r in rows:
        parts = [r[f"{p}_ms"] for p in STEP_PARTS]
        assert all(t > 0 for t in parts)
        # medians of the parts need not add up to the median step, but cannot exceed it by much
        assert sum(parts) <= 1.5 * r["step_ms"]
    assert all(rows[0][f"{p}_ratio"] == 1.0 for p in STEP_PARTS)
    assert "| block (S=4) |" in format_step_split_table(rows)
