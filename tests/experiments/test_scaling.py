"""`attnres scaling` end to end at toy size (results, fits, plot, resume) and `attnres report`.

Runs train in this process (`--quick` does) so a test pays no process start-up per run. Nothing
here asserts which arm wins."""

import json
from pathlib import Path

import pytest

from attnres import units
from attnres.cli import main
from attnres.config import ConfigError
from attnres.experiments import report, scaling
from attnres.experiments.plots import COLORS
from attnres.models.dense import PRESETS
from attnres.train import trainer as trainer_mod


def test_ladder_grows_depth_and_width_together():
    sizes = scaling.ladder_sizes(5)
    assert [s[1] for s in sizes] == [4, 5, 6, 7, 8]
    for d, layers, heads, d_ff in sizes:
        assert d == 16 * layers and heads == layers and d % heads == 0
        assert d_ff % 16 == 0 and 8 * d / 3 <= d_ff < 8 * d / 3 + 16
    for preset, (d, layers, _, d_ff) in (("tiny", sizes[0]), ("small", sizes[-1])):
        assert (d, layers, d_ff) == (PRESETS[preset]["d_model"], PRESETS[preset]["n_layers"], PRESETS[preset]["d_ff"])
    for shape in scaling.ladder_sizes(8, first_layers=1):
        size = scaling.Size(*shape)
        n_blocks = units.num_blocks(size.n_sublayers, size.block_size)
        assert size.block_size >= 2 and n_blocks <= 8
    assert scaling.Size(*scaling.ladder_sizes(1, first_layers=12)[0]).block_size == 3  # L = 24: N = 8


def _args(corpus, tmp_path, out, *extra):
    return ["scaling", "--quick", "--data", str(corpus), "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--seq-len", "32", "--device", "cpu", "--no-progress",
            "--set", f"data.cache_dir={tmp_path / 'tok'}", "--set", "train.tensorboard=false",
            "--set", "train.eval_batches=2", *extra]


@pytest.mark.slow
def test_quick_sweep_writes_results_fit_plot_and_report(tmp_path, text_corpus, capsys, plot_colors,
                                                        drawn_colors):
    out = tmp_path / "results" / "scaling"
    code = main(_args(text_corpus, tmp_path, out, "--sizes", "3", "--seeds", "2", "--residual", "prenorm,block"))
    assert code == 0
    files = sorted(out.rglob("seed-*.json"))
    assert len(files) == 3 * 2 * 2
    for path in files:
        r = json.loads(path.read_text())
        assert path.relative_to(out).parts == (r["group"], r["arm"], f"seed-{r['seed']}.json")
        for key in ("val_loss", "val_bpb", "params", "tokens", "wall_s", "tokens_per_s", "peak_rss_mb"):
            assert r[key] > 0, key
        assert r["compute_flops"] == 6 * r["params_compute"] * r["tokens"]
        assert r["compute_pfs_days"] == pytest.approx(r["compute_flops"] / 8.64e19)
        assert r["params_non_embedding_ar"] == r["params_compute"] - r["d_model"] * r["vocab_size"]
        assert r["tokens"] == r["steps"] * r["batch_size"] * r["seq_len"] and r["hardware"]
    baseline = [json.loads(p.read_text()) for p in files if "prenorm" in p.parts]
    block = [json.loads(p.read_text()) for p in files if "block" in p.parts]
    assert {r["group"] for r in baseline} == {"d16-L1", "d32-L2", "d48-L3"}
    # paired arms share the token budget; Block adds exactly 2d(L+1) parameters
    for b in baseline:
        v = next(x for x in block if x["group"] == b["group"] and x["seed"] == b["seed"])
        assert v["tokens"] == b["tokens"]
        assert v["params"] - b["params"] == 2 * b["d_model"] * (b["n_sublayers"] + 1)
    summary = json.loads((out / "summary.json").read_text())["scaling"]
    for arm in ("prenorm", "block"):
        assert summary["fits"][arm]["A"] > 0 and len(summary["fits"][arm]["C"]) == 3
    adv = summary["advantage"]["block"]
    assert adv["multiplier"] > 0 and adv["bootstrap"]["low"] <= adv["bootstrap"]["high"]
    counts = plot_colors(out / "scaling.png", COLORS["prenorm"], COLORS["block"])
    assert all(n > 20 for n in counts.values()), counts
    # depth analyses of the largest size: per-arm statistics over both seeds, and their plots
    depth = summary["depth"]
    assert depth["group"] == "d48-L3" and set(depth["arms"]) == {"prenorm", "block"}
    assert depth["arms"]["block"]["seeds"] == [0, 1] and len(depth["arms"]["block"]["locality"]) == 2
    assert depth["arms"]["prenorm"]["locality"] == [None, None]
    for name in ("depth_profiles_d48-L3.png", "depth_attention_d48-L3_block.png"):
        assert drawn_colors(out / name) > 50, name
    assert not (out / "depth_attention_d48-L3_prenorm.png").exists()
    printed = capsys.readouterr().out
    assert "| d48-L3 | block |" in printed and "Compute advantage" in printed

    # `attnres report` rebuilds the same tables from the raw JSONs alone
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == before.strip()
    assert (out / "report.md").read_text() == before
    assert main(["report", str(tmp_path / "results")]) == 0  # found from a parent folder too
    assert "| d16-L1 | prenorm | 0,1 |" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_resumes_after_a_kill(tmp_path, text_corpus, monkeypatch, request):
    """Kill the sweep inside its last run; the re-run trains that run alone, from its last
    checkpoint, to the result of an uninterrupted run. A deleted result re-trains only itself."""
    out = tmp_path / "out"
    extra = ("--sizes", "2", "--seeds", "1", "--residual", "prenorm,block")
    real_step = trainer_mod.Trainer.train_step

    def dying_step(self):  # dies in the 5th step of the last run (checkpointed every step)
        if self.run_dir.as_posix().endswith("d32-L2/block/seed-0") and self.step == 4:
            raise RuntimeError("simulated kill")
        return real_step(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", dying_step)
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(_args(text_corpus, tmp_path, out, *extra))
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", real_step)
    done = {p: p.read_bytes() for p in out.rglob("seed-*.json")}
    assert len(done) == 3

    trained = request.getfixturevalue("trained_runs")  # counts from here on
    assert main(_args(text_corpus, tmp_path, out, *extra)) == 0
    assert trained == ["d32-L2/block/seed-0"]
    assert all(p.read_bytes() == data for p, data in done.items())
    resumed = json.loads((out / "d32-L2" / "block" / "seed-0.json").read_text())
    assert resumed["config"]["train"]["ckpt_every"] == 1
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] > 4

    # the same run, uninterrupted, in fresh folders
    ref_out = tmp_path / "ref"
    assert main(_args(text_corpus, tmp_path / "ref-runs", ref_out, "--sizes", "2", "--seeds", "1",
                      "--residual", "block")) == 0
    reference = json.loads((ref_out / "d32-L2" / "block" / "seed-0.json").read_text())
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-6)

    # a deleted result of a finished run is collected again from its run folder, not retrained
    trained.clear()
    victim = out / "d16-L1" / "prenorm" / "seed-0.json"
    old = json.loads(victim.read_text())
    victim.unlink()
    assert main(_args(text_corpus, tmp_path, out, *extra)) == 0
    assert trained == []
    new = json.loads(victim.read_text())
    assert {k: v for k, v in new.items() if k != "finished_at"} == {k: v for k, v in old.items() if k != "finished_at"}


@pytest.mark.slow
def test_workers_train_side_by_side_to_the_same_results(tmp_path, text_corpus):
    """--workers 2 trains each run in its own one-thread process; the results are those of
    in-process training, up to the float reordering of another thread count."""
    extra = ("--sizes", "1", "--seeds", "1", "--residual", "prenorm,block")  # 2 runs, 2 workers
    assert main(_args(text_corpus, tmp_path / "a", tmp_path / "serial", *extra)) == 0
    assert main(_args(text_corpus, tmp_path / "b", tmp_path / "side", *extra, "--workers", "2")) == 0
    serial = {p.relative_to(tmp_path / "serial"): json.loads(p.read_text())
              for p in (tmp_path / "serial").rglob("seed-*.json")}
    side = {p.relative_to(tmp_path / "side"): json.loads(p.read_text())
            for p in (tmp_path / "side").rglob("seed-*.json")}
    assert len(serial) == 2 and serial.keys() == side.keys()
    for key, r in serial.items():
        assert side[key]["val_loss"] == pytest.approx(r["val_loss"], rel=1e-4), key
        assert side[key]["steps"] == r["steps"]


def test_bad_worker_counts_are_refused():
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        scaling.run_jobs([], workers=0)
    with pytest.raises(ConfigError, match="in-process"):
        scaling.run_jobs([], in_process=True, workers=2)


@pytest.mark.slow
def test_changed_settings_are_refused(tmp_path, text_corpus, capsys):
    out = tmp_path / "out"
    extra = ("--sizes", "2", "--seeds", "1", "--residual", "prenorm")
    assert main(_args(text_corpus, tmp_path, out, *extra)) == 0
    capsys.readouterr()
    assert main(_args(text_corpus, tmp_path, out, *extra, "--tokens-per-param", "0.1")) == 2
    assert "other settings" in capsys.readouterr().err


def _fake_run(root, group, arm, seed, loss):
    path = Path(root) / "ablate" / group / arm / f"seed-{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"experiment": "ablate", "group": group, "arm": arm, "seed": seed,
                                "val_loss": loss, "val_bpb": loss / 0.7, "tokens_per_s": 1000.0,
                                "peak_rss_mb": 300.0, "wall_s": 10.0}))


def test_report_builds_generic_mean_sd_tables(tmp_path, capsys):
    for seed, (b, v) in enumerate([(2.0, 1.9), (2.2, 2.0)]):
        _fake_run(tmp_path, "base", "prenorm", seed, b)
        _fake_run(tmp_path, "base", "sigmoid", seed, v)
    (tmp_path / "ablate" / "summary.json").write_text("{}")  # not a per-run file: ignored
    runs = report.load_runs(tmp_path)
    assert [(r["arm"], r["seed"]) for r in runs] == [("prenorm", 0), ("prenorm", 1), ("sigmoid", 0), ("sigmoid", 1)]
    assert report.paired_deltas(runs)[("ablate", "base", "sigmoid")] == pytest.approx([-0.1, -0.2])
    assert main(["report", str(tmp_path), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "## Experiment `ablate`" in out
    assert "| base | prenorm | 0,1 | 2.1000 ± 0.1414 | — |" in out
    assert "| base | sigmoid | 0,1 | 1.9500 ± 0.0707 | -0.1500 ± 0.0707 |" in out
    assert not (tmp_path / "report.md").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
