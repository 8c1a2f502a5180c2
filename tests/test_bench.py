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


def test_kda_chunk_size_script_prints_one_row_per_chunk_size():
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kda_chunk_size.py"
    out = subprocess.run([sys.executable, str(script), "--shape", "1,32,1,8", "--repeats", "1",
                          "--chunk-sizes", "8,16", "--threads", "1"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["8", "16"]
    assert rows[1].split("|")[3].strip() == "1.00"      # the reference arm over itself
    assert "paired time / C = 16" in out


def test_decode_kernel_count_rows():
    from attnres.bench.decode import count_decode_kernels, format_decode_kernels_table
    rows = count_decode_kernels("tiny", new_tokens=2)
    assert [r["arm"] for r in rows] == ["prenorm", "block", "full"]
    # the reads add kernels to every sublayer: an AttnRes arm launches more than the baseline
    assert all(r["aten_calls"] > rows[0]["aten_calls"] for r in rows[1:])
    assert "| block |" in format_decode_kernels_table(rows)


def test_timing_statistics():
    from attnres.bench.timing import iqr, paired_median
    # rounds pair up: the per-round ratios are 2, 2, 3 (the medians of the arms alone give 4 / 2)
    assert paired_median([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert iqr([5.0]) == 0.0 and iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 3.0
