"""`attnres compare` end to end at toy size: the arms, the summary, the report and the plots."""

import json

import pytest

from attnres.cli import main
from attnres.experiments.plots import COLORS
from attnres.train.metrics import read_metrics


@pytest.mark.slow
def test_compare_writes_summary_report_and_plots(tmp_path, text_corpus, capsys, plot_colors,
                                                 drawn_colors):
    out = tmp_path / "cmp"
    code = main(["compare", "--preset", "tiny", "--steps", "4", "--seed", "0", "--workers", "1", "--data", str(text_corpus),
                 "--out", str(out), "--seq-len", "32", "--batch-size", "2", "--block-size", "2",
                 "--device", "cpu", "--no-progress",
                 "--set", f"data.cache_dir={tmp_path / 'tok'}", "--set", "model.n_layers=2",
                 "--set", "train.tensorboard=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| prenorm |" in printed and "| block |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "tiny" and summary["steps"] == 4
    assert summary["tokens_per_step"] == 64
    for name in ("prenorm", "full", "block"):
        v = summary["variants"][name]
        for key in ("val_loss", "val_bpb", "tokens_per_s", "peak_rss_mb", "params", "wall_s"):
            assert key in v and v[key] > 0, (name, key)
    # same backbone: AttnRes adds exactly 2d(L+1) parameters
    d, L = 64, 4
    assert summary["variants"]["full"]["params"] - summary["variants"]["prenorm"]["params"] == 2 * d * (L + 1)
    # each arm's curve is drawn in its colour; the heat maps and the trace are drawn at all
    for png in ("loss_curves.png", "depth_profiles.png"):
        counts = plot_colors(out / png, *(COLORS[arm] for arm in ("prenorm", "full", "block")))
        assert all(n > 0 for n in counts.values()), (png, counts)  # curves overlap at 4 steps
    for png in ("depth_attention_full.png", "depth_attention_block.png", "depth_trace.png"):
        assert drawn_colors(out / png) > 50, png
    report = (out / "report.md").read_text()
    assert "Seed spread" in report and "| full |" in report and "depth_trace.png" in report
    # drop-in at the default config: the first training loss is the baseline's in every arm
    first = {name: next(r["loss"] for r in read_metrics(out / name / "seed-0" / "metrics.jsonl")
                        if r["kind"] == "train") for name in ("prenorm", "full", "block")}
    for name in ("full", "block"):
        assert abs(first[name] / first["prenorm"] - 1) < 1e-5, first
    # the depth trace starts uniform (weight 1/n on the embedding, entropy 1) and is logged at
    # step 0 and at every evaluation
    trace = [r for r in read_metrics(out / "block" / "seed-0" / "metrics.jsonl") if r["kind"] == "depth"]
    evals = [r["step"] for r in read_metrics(out / "block" / "seed-0" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in trace] == [0] + evals
    n_sources = [1, 2, 2, 3, 3]          # L = 4 sublayers, S = 2, and the final read
    assert trace[0]["embedding_weight"] == pytest.approx([1 / n for n in n_sources], rel=1e-6)
    assert trace[0]["entropy"][0] is None and trace[0]["entropy"][1:] == pytest.approx([1.0] * 4)


@pytest.mark.slow
def test_compare_kimi_linear_reports_expert_load(tmp_path, text_corpus, capsys, drawn_colors):
    out = tmp_path / "kl"
    code = main(["compare", "--backbone", "kimi-linear", "--preset", "tiny", "--steps", "3", "--seed", "0", "--workers", "2",
                 "--residual", "prenorm,block", "--data", str(text_corpus), "--out", str(out),
                 "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--no-progress",
                 "--set", f"data.cache_dir={tmp_path / 'tok'}", "--set", "train.tensorboard=false"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "kimi-linear" and set(summary["variants"]) == {"prenorm", "block"}
    assert drawn_colors(out / "expert_load.png") > 50
    assert "expert_load.png" in (out / "report.md").read_text()
