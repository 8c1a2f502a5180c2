"""`attnres ablate` and `attnres sweep`: variant wiring, quick end-to-end runs, resume, reports.

The wiring tests look at the modules each variant's overrides build, never at losses; the
end-to-end runs train in this process (`--quick` does) for a few steps. Nothing here asserts
which variant wins."""

import json

import pytest

from attnres.cli import main
from attnres.experiments import ablate, paper
from attnres.experiments.plots import COLORS
from attnres.layers.depth_variants import DenseMix, HyperConnection, ReadOptions, VariantRead
from attnres.layers.residual import DepthRead
from attnres.train.build import build_model

VOCAB = 64


def _model(residual, **changes):
    s = ablate.settings(quick=True, device="cpu", **changes)
    return build_model(ablate.run_config(s, residual, seed=0), VOCAB)


def _reads(model):
    return model.reads()  # L per-sublayer reads, then the final read


def test_depth_heads_is_the_nearest_divisor():
    assert [ablate.depth_heads(d) for d in (16, 64, 96, 192, 100, 12)] == [16, 16, 16, 16, 20, 12]


@pytest.mark.parametrize("name", list(ablate.VARIANTS))
def test_each_variant_builds_the_residual_its_name_says(name):
    model = _model(ablate.variant_residual(name, 16))
    res, reads = model.residual, _reads(model)
    n_sub = model.cfg.n_sublayers
    assert n_sub == 32 and len(reads) == n_sub + 1
    expected_kind = {"prenorm": "prenorm", "denseformer": "denseformer", "mhc": "mhc"}.get(
        name, "block" if name.startswith("block") else "full")
    assert res.kind == expected_kind
    if res.kind == "prenorm":
        assert all(r is None for r in reads)
    elif res.kind == "denseformer":
        mixes = [r for r in reads if r is not None]
        assert all(isinstance(r, DenseMix) for r in mixes) and len(mixes) == n_sub // 2
    elif res.kind == "mhc":
        assert all(isinstance(r, HyperConnection) for r in reads[:-1]) and reads[-1] is None
    else:
        assert res.block_size == (1 if res.kind == "full" else 4)
        options = {
            "full": ReadOptions(), "block": ReadOptions(),
            "full-input-query": ReadOptions(query="input_dependent"),
            "full-static-mixing": ReadOptions(mixing="static"),
            "full-sigmoid": ReadOptions(kernel="sigmoid"),
            "full-no-key-norm": ReadOptions(key_norm="none"),
            "swa": ReadOptions(window=ablate.SWA_WINDOW),
            "block-multihead": ReadOptions(heads=16),
            "block-no-key-norm": ReadOptions(key_norm="none"),
        }[name]
        assert res.options == options
        read = reads[5]
        if name in ("full", "block", "swa"):
            assert all(type(r) is DepthRead for r in reads)  # the plain read; SWA only drops sources
        else:
            assert all(isinstance(r, VariantRead) for r in reads)
        if name == "full-input-query":
            assert read.query_proj.shape == (16, 16) and not hasattr(read, "query")
        if name == "full-static-mixing":
            assert not hasattr(read, "query") and read.logits.shape == (6,)  # b_0, v_1..v_5
        if name.endswith("no-key-norm"):
            assert read.key_norm is None and read.query.shape == (16,)
        if name == "full-sigmoid":
            assert read.options.kernel == "sigmoid" and read.key_norm.weight.shape == (16,)


def test_every_arm_shares_backbone_budget_and_lr():
    s = ablate.settings(quick=True, device="cpu")
    cfgs = [ablate.run_config(s, ablate.variant_residual(v, s.d_model), 0) for v in ablate.VARIANTS]
    cfgs += [ablate.run_config(s, ablate.sweep_residual(k), 0) for k in ablate.SWEEP_SIZES]
    shared = [{k: v for k, v in c.to_dict().items() if k != "residual"} for c in cfgs]
    assert all(d == shared[0] for d in shared)
    assert shared[0]["model"]["n_layers"] == 16 and shared[0]["train"]["steps"] == s.steps


def test_sweep_arms_set_the_block_size_and_reuse_the_ablation_configs():
    s = ablate.settings(quick=True, device="cpu")
    for k in ablate.SWEEP_SIZES:
        res = _model(ablate.sweep_residual(k)).residual
        assert (res.kind, res.block_size) == ("full" if k == 1 else "block", k)
    assert _model(ablate.sweep_residual(None)).residual.kind == "prenorm"
    # S = 1, S = 4 and the baseline are the ablation's runs, so they share a run folder
    for k, variant in ((1, "full"), (4, "block"), (None, "prenorm")):
        assert ablate.sweep_run_name(k) == variant
        sweep_cfg = ablate.run_config(s, ablate.sweep_residual(k), 1)
        assert sweep_cfg.to_dict() == ablate.run_config(s, ablate.variant_residual(variant, s.d_model), 1).to_dict()
    with pytest.raises(Exception, match="block size 64"):
        ablate.arms(ablate.settings(block_sizes=(64,)), "sweep")


def _args(command, corpus, tmp_path, out, *extra):
    return [command, "--quick", "--data", str(corpus), "--out", str(out), "--runs", str(tmp_path / "runs"),
            "--steps", "3", "--device", "cpu", "--no-progress",
            "--set", f"data.cache_dir={tmp_path / 'tok'}", "--set", "train.tensorboard=false", *extra]


@pytest.mark.slow
def test_quick_ablate_and_sweep_write_results_reports_and_resume(tmp_path, text_corpus, capsys, monkeypatch, plot_colors,
                                                                request):
    results = tmp_path / "results"
    variants = ("prenorm", "full", "block-multihead")
    assert main(_args("ablate", text_corpus, tmp_path, results / "ablate", "--variants", ",".join(variants))) == 0
    files = sorted((results / "ablate").rglob("seed-*.json"))
    assert len(files) == len(variants) * 2
    for path in files:
        r = json.loads(path.read_text())
        assert path.relative_to(results / "ablate").parts == (r["arm"], f"seed-{r['seed']}.json")
        assert r["experiment"] == "ablate" and r["group"] == "d16-L16" and r["n_sublayers"] == 32
        for key in ("val_loss", "tokens_per_s", "peak_rss_mb", "tokens"):
            assert r[key] > 0, key
        assert r["steps"] == 3 and r["label"] == paper.TABLE4[r["arm"]][0].format(heads=16)
    multihead = json.loads((results / "ablate" / "block-multihead" / "seed-0.json").read_text())
    assert (multihead["residual"], multihead["block_size"], multihead["depth_heads"]) == ("block", 4, 16)
    md = (results / "ablate" / "report.md").read_text()
    assert "| d16-L16 | prenorm | 0,1 |" in md and "| 1.766 | — |" in md
    assert "| 1.737 | -0.029 |" in md  # the paper's Full row beside ours
    summary = json.loads((results / "ablate" / "summary.json").read_text())["ablate"]["groups"]["d16-L16"]
    assert set(summary["arms"]) == set(variants) and summary["arms"]["full"]["delta"]["n"] == 2
    capsys.readouterr()

    trained = request.getfixturevalue("trained_runs")  # counts from here on
    # a finished suite trains nothing again; a lost result is collected from its run folder
    before = (results / "ablate" / "full" / "seed-1.json").read_text()
    (results / "ablate" / "full" / "seed-1.json").unlink()
    assert main(_args("ablate", text_corpus, tmp_path, results / "ablate", "--variants", ",".join(variants))) == 0
    assert trained == []
    assert json.loads((results / "ablate" / "full" / "seed-1.json").read_text())["val_loss"] == json.loads(before)["val_loss"]

    # the sweep reuses the ablation's baseline and Full (S = 1) runs and trains S = 2 alone
    assert main(_args("sweep", text_corpus, tmp_path, results / "sweep", "--block-sizes", "1,2")) == 0
    assert trained == ["block-S2/seed-0", "block-S2/seed-1"]
    assert sorted(p.relative_to(results / "sweep").as_posix() for p in (results / "sweep").rglob("seed-*.json")) == \
        [f"{arm}/seed-{k}.json" for arm in ("S1", "S2", "prenorm") for k in (0, 1)]
    s1 = json.loads((results / "sweep" / "S1" / "seed-0.json").read_text())
    full = json.loads((results / "ablate" / "full" / "seed-0.json").read_text())
    assert (s1["experiment"], s1["arm"], s1["block_size"], s1["n_blocks"]) == ("sweep", "S1", 1, 32)
    assert s1["val_loss"] == full["val_loss"]
    counts = plot_colors(results / "sweep" / "sweep_d16-L16.png", COLORS["prenorm"], COLORS["block"])
    assert all(n > 20 for n in counts.values()), counts

    # `attnres report results/` picks up both experiments
    capsys.readouterr()
    assert main(["report", str(results), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "## Experiment `ablate`" in out and "## Experiment `sweep`" in out
    assert "| d16-L16 | 2 | 16 | 0,1 |" in out and "| S=1 ≤ S=2 |" in out

    # other settings for the same folders are refused, never mixed in
    assert main(_args("sweep", text_corpus, tmp_path, results / "sweep", "--block-sizes", "1,2",
                      "--lr", "0.001")) == 2
    assert "other settings" in capsys.readouterr().err


def test_dry_run_and_bad_arguments(tmp_path, text_corpus, capsys):
    out = tmp_path / "out"
    assert main(_args("ablate", text_corpus, tmp_path, out, "--dry-run")) == 0
    plan = capsys.readouterr().out
    assert "12 arms × 2 seeds = 24 runs" in plan and "| mhc | mHC (m = 4) | mhc |" in plan
    assert not out.exists()
    assert main(_args("ablate", text_corpus, tmp_path, out, "--variants", "prenorm,nope")) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    assert main(_args("sweep", text_corpus, tmp_path, out, "--block-sizes", "1,x")) == 2
    assert main(_args("sweep", text_corpus, tmp_path, out, "--block-sizes", "33", "--dry-run")) == 2
