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


def test_qk_clip_tracking_bench_rows_and_same_decisions():
    """The tracking arms of benchmarks/bench_step.py --qk-clip: at a τ that clips, the exact and
    the bound arms (same weights, same batch) clip the same heads."""
    from attnres.bench.step import format_qk_clip_table, run_qk_clip_bench
    rows = run_qk_clip_bench("tiny", batch=2, seq=32, repeats=2, warmup=1, tau=0.05,
                             arms=("off", "exact", "bound", "bound-all-over"))
    by_arm = {r["arm"]: r for r in rows}
    assert list(by_arm) == ["off", "exact", "bound", "bound-all-over"]
    assert by_arm["off"]["clipped_heads"] == 0 and by_arm["exact"]["clipped_heads"] > 0
    assert by_arm["bound"]["clipped_heads"] == by_arm["exact"]["clipped_heads"]
    assert "| bound |" in format_qk_clip_table(rows)
