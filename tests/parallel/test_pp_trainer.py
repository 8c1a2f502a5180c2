"""`attnres train --pp 2 --virtual-stages 2` through the trainer on 2 gloo processes equals one
process (docs/THEORY.md#cross-stage-caching, fp32 rel ≤ 1e-4), logs the plan's block-vector counts, writes a
single-process checkpoint, and resumes bitwise.

The model is a tiny kimi-linear (layers KDA, MLA, KDA, each with an MoE FFN) under Block
AttnRes S = 2: 6 sublayers in chunks of [2, 2, 1, 1] on ranks 0, 1, 0, 1, so the payloads are
[b0,b1], [b0,b1,b2], [b0,b1,b2] naive (8) and [b0,b1], +[b1,b2], +[b2] cached (5). The MLA runs
on rank 1 and MoE layers on both ranks, so the QK-Clip maxima (τ low enough to clip) and the
MoE counts that rank 0 logs and saves must be reduced over the pipeline ranks.

This file is also the worker script: two plain processes with torchrun's environment variables
run, in one launch, the CLI with and without --pp-cache and a Trainer stopped and resumed.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from attnres import config, units
from attnres.parallel import pp_plan
from attnres.train.trainer import Trainer, load_for_inference
from two_ranks import final_state, free_port, launch, rel, train_records

STEPS, SPLIT = 3, 2
MODEL = ["model.backbone=kimi-linear", "model.preset=tiny", "model.n_layers=3",
         "model.d_model=32", "model.layer_pattern=KM", "model.n_experts=4", "model.top_k=2",
         "model.first_k_dense=0", "residual.kind=block", "residual.block_size=2",
         "optim.qk_clip_tau=0.034", f"train.steps={STEPS}"]
PP = ["parallel.pp=2", "parallel.virtual_stages=2"]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def launch_ranks(root: Path, base: list[str]) -> None:
    spec = root / "jobs.json"
    ports = [free_port(), free_port()]
    spec.write_text(json.dumps({"base": base, "root": str(root), "ports": ports}))
    launch(__file__, spec, timeout_s=180, port=ports[0])


@pytest.mark.slow
def test_pipelined_trainer_matches_one_process(tmp_path, run_overrides):
    base = run_overrides + MODEL
    Trainer(config.load(overrides=base), run_dir=tmp_path / "single").train()  # fills the cache
    launch_ranks(tmp_path, base)

    plan = pp_plan(2, 2, units.block_closes(6, 2), 6)
    assert (plan.naive_total, plan.cached_total) == (8, 5)
    ref = train_records(tmp_path / "single")
    for run, sent in (("cached", plan.cached_total), ("naive", plan.naive_total)):
        got = train_records(tmp_path / run)
        assert [r["step"] for r in got] == list(range(1, STEPS + 1)), run
        assert all(r["pp_block_vectors_sent"] == r["pp_block_vectors_planned"] == sent
                   for r in got), (run, got)
        for a, b in zip(got, ref):
            assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(b["loss"]), (run, a["step"])
            assert a["qk_clipped"] == b["qk_clipped"], run    # max logits reduced over stages
            assert max(abs(x - y) / abs(y) for x, y in zip(a["max_logit"], b["max_logit"])) <= 1e-4
    assert sum(r["qk_clipped"] for r in ref) > 0               # QK-Clip did act

    # the checkpoint is the single-process one: every weight, buffer and optimizer state
    (w_ref, s_ref), (w, s) = final_state(tmp_path / "single", STEPS), final_state(tmp_path / "cached", STEPS)
    assert w.keys() == w_ref.keys()
    for name, value in w.items():
        assert rel(value, w_ref[name]) <= 1e-4, name
    for inner, opt_ref in s_ref["optimizer"]["optimizers"].items():
        opt = s["optimizer"]["optimizers"][inner]
        assert opt["state"].keys() == opt_ref["state"].keys(), inner
        assert [g["params"] for g in opt["param_groups"]] == \
            [g["params"] for g in opt_ref["param_groups"]]
        for i, st in opt["state"].items():
            for key, value in st.items():
                assert rel(value, opt_ref["state"][i][key]) <= 1e-4, (inner, i, key)
    assert s["scheduler"] == s_ref["scheduler"]
    load_for_inference(tmp_path / "cached", torch.device("cpu"))   # what `attnres generate` reads

    # stopped at step 2 and resumed on the same 2 x 2 layout: bitwise the uninterrupted run
    resumed, straight = train_records(tmp_path / "resumed"), train_records(tmp_path / "cached")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    w_resumed, _ = final_state(tmp_path / "resumed", STEPS)
    assert all(torch.equal(w_resumed[k], w[k]) for k in w)


def test_pipeline_config_errors_are_one_line():
    for overrides, match in ((PP + ["parallel.mode=dp"], "cannot be combined"),
                             (["parallel.virtual_stages=2"], "apply only to parallel.pp > 1"),
                             (PP + ["parallel.microbatches=3"], "not divisible"),
                             (["parallel.pp=4", "train.batch_size=2"], "must be >= pp"),
                             (PP + ["residual.kind=denseformer"], "supports residual.kind")):
        with pytest.raises(config.ConfigError, match=match) as err:
            config.load(overrides=overrides)
        assert "\n" not in str(err.value)
    par = config.load(overrides=PP).parallel
    assert par.pp_cache and par.pp_microbatches(8) == 2 and par.pp_microbatches(3) == 3
    assert config.load(overrides=["parallel.pp=4"]).parallel.pp_microbatches(6) == 6   # V = 1


if __name__ == "__main__":  # one rank of the 2-process launch above
    from attnres import cli
    from attnres.parallel.distributed import cleanup, init_distributed
    job = json.loads(Path(sys.argv[1]).read_text())
    root, base = Path(job["root"]), job["base"]
    init_distributed("gloo")  # from the environment, as under torchrun
    cfg = config.load(overrides=base + PP)
    Trainer(cfg, run_dir=root / "resumed").train_steps_only(SPLIT)
    Trainer(cfg, run_dir=root / "resumed", resume=root / "resumed").train()
    flags = [a for o in base for a in ("--set", o)]
    for name, cache, port in (("cached", "--pp-cache", None), ("naive", "--no-pp-cache", 1)):
        if port is not None:  # the CLI left the process group: join a fresh one
            os.environ["MASTER_PORT"] = str(job["ports"][port])
        code = cli.main(["train", "--pp", "2", "--virtual-stages", "2", cache, "--out",
                         str(root / name)] + flags)
        assert code == 0, name
    cleanup()
