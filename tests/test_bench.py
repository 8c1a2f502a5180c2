"""`attnres bench --quick` runs every benchmark end to end (numbers are not asserted: CI is noisy)."""

import pytest

from attnres.bench.run import WHAT, run_benchmarks


@pytest.mark.slow
def test_every_benchmark_runs_quick():
    text = run_benchmarks(what=WHAT, quick=True, device="cpu")
    for heading in ("Depth-attention op", "Training step", "KDA", "MoE", "Decode", "Data"):
        assert heading in text
    assert "| block (S=4) |" in text and "| kimi-linear (tiny) |" in text
