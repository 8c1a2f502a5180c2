"""Training loop: resume continues the same trajectory; failures keep what was saved."""

import json
import math

import pytest
import torch

from attnres import config
from attnres.train import checkpoint as ckpt
from attnres.train.metrics import read_metrics
from attnres.train.trainer import Trainer, TrainingDiverged


def make_cfg(overrides, *extra):
    return config.load(overrides=list(overrides) + list(extra))


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize("residual", [["residual.kind=prenorm"],
                                      ["residual.kind=block", "residual.block_size=2"]])
def test_resume_continues_bitwise_the_same_trajectory(tiny_overrides, tmp_path, residual):
    n, k = 6, 3
    straight = tmp_path / "straight"
    Trainer(make_cfg(tiny_overrides, f"train.steps={n}", *residual), run_dir=straight).train()

    split = tmp_path / "split"
    Trainer(make_cfg(tiny_overrides, f"train.steps={n}", *residual), run_dir=split).train_steps_only(k)
    resumed = Trainer(make_cfg(tiny_overrides, f"train.steps={n}", *residual), run_dir=split,
                      resume=split)
    assert resumed.step == k
    resumed.train()
    assert losses(split) == losses(straight)  # bitwise: the float values are identical
    a = ckpt.load_state(straight / "checkpoints" / f"step-{n}")
    b = ckpt.load_state(split / "checkpoints" / f"step-{n}")
    assert a["step"] == b["step"] == n
    assert a["optimizer"]["optimizers"].keys() == b["optimizer"]["optimizers"].keys()
    for name, inner in a["optimizer"]["optimizers"].items():
        other = b["optimizer"]["optimizers"][name]
        assert inner["param_groups"] == other["param_groups"]
        for idx, st in inner["state"].items():
            for key, value in st.items():
                assert torch.equal(value, other["state"][idx][key]), (name, idx, key)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_steps_are_skipped_counted_and_limited(where, tiny_overrides, tmp_path, capsys):
    """A NaN loss, or a finite loss with an infinite gradient: no update, a warning and a count
    per step, and one too many in a row stops the run without saving over the last checkpoint."""
    run = tmp_path / "run"
    trainer = Trainer(make_cfg(tiny_overrides, "train.steps=20", "train.max_skipped_steps=2",
                               "train.ckpt_every=1"), run_dir=run)
    trainer.train_steps_only(2)
    saved = (run / "checkpoints" / "step-2" / "model.safetensors").read_bytes()
    weight = trainer.model.lm_head.weight
    if where == "loss":
        with torch.no_grad():
            weight.fill_(float("nan"))
    else:
        weight.register_hook(lambda g: g * float("inf"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    capsys.readouterr()
    # steps 3 and 4 are skipped (and not saved), step 5 is one too many
    with pytest.raises(TrainingDiverged, match="at step 5: 3 non-finite steps in a row"):
        trainer.train()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "update skipped" in line]
    assert [w.split("update skipped (")[1] for w in warnings] == \
        [f"{k} in a row, limit 2)" for k in (1, 2, 3)]
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in records[2:]] == [(3, 1), (4, 2), (5, 3)]
    for n, p in trainer.model.named_parameters():  # no update went through
        assert torch.equal(p.detach(), before[n]) or (where == "loss" and p is weight), n
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert (run / "checkpoints" / "step-2" / "model.safetensors").read_bytes() == saved


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    Trainer(make_cfg(tiny_overrides, "train.steps=2"), run_dir=run).train()
    where = run / "checkpoints" / "step-2"

    other = make_cfg(tiny_overrides, "train.steps=4", "model.d_model=48", "model.n_heads=3")
    with pytest.raises(ckpt.CheckpointError, match="another model configuration"):
        Trainer(other, run_dir=tmp_path / "x", resume=run)

    good = (where / "model.safetensors").read_bytes()
    (where / "model.safetensors").write_bytes(good[:100])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors: corrupt"):
        Trainer(make_cfg(tiny_overrides, "train.steps=4"), run_dir=tmp_path / "y", resume=run)
    (where / "model.safetensors").write_bytes(good)

    (where / "state.json").write_bytes(b"not json")
    with pytest.raises(ckpt.CheckpointError, match="state.json: corrupt"):
        Trainer(make_cfg(tiny_overrides, "train.steps=4"), run_dir=tmp_path / "z", resume=run)

    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "nowhere")


def test_a_run_writes_metrics_result_analysis_and_learns(tiny_overrides, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(tiny_overrides, "train.steps=30", "train.analysis=true", "train.eval_every=15",
                   "residual.kind=full")
    result = Trainer(cfg, run_dir=run).train()
    records = read_metrics(run / "metrics.jsonl")
    kinds = {r["kind"] for r in records}
    assert {"params", "train", "eval", "final"} <= kinds
    train = losses(run)
    assert train[-1] < train[0] - 0.5  # a byte model learns the letter statistics fast
    assert math.isfinite(result.val_loss) and result.val_bpb > 0 and result.tokens_per_s > 0
    analysis = json.loads((run / "analysis.json").read_text())
    L = analysis["n_sublayers"]
    assert len(analysis["output_rms"]) == len(analysis["grad_norm"]) == L
    assert len(analysis["depth_weights"]) == L + 1
    for r, w in enumerate(analysis["depth_weights"]):
        assert len(w) == r + 1 and abs(sum(w) - 1) < 1e-5  # Full: read l sees l sources
    assert all(g > 0 for g in analysis["grad_norm"])


def test_checkpoint_write_is_atomic_on_failure(tiny_overrides, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(make_cfg(tiny_overrides, "train.steps=4"), run_dir=run)
    trainer.train_steps_only(2)

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt, "_write_atomic", boom)
    trainer.step = 3
    with pytest.raises(OSError):
        trainer.save()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    ckpt.resolve_checkpoint(run)  # still loadable
