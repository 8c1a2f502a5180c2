"""The command line: user errors are one line and a non-zero exit; train/generate work."""

import json
import subprocess
import sys

import pytest

from attnres.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_config_key_is_one_line(capsys, tiny_overrides):
    code, _, err = run_cli(capsys, "train", "--set", "train.stpes=3")
    assert code == 2
    assert err.strip().count("\n") == 0 and "did you mean 'steps'" in err


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"\x00\x01binary\x00", "binary"),
                                             (b"\xff\xfe\xfa bad utf8", "UTF-8")])
def test_bad_corpus_is_one_line(capsys, tmp_path, content, message):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, "train", "--set", f"data.source={bad}", "--set",
                           f"data.cache_dir={tmp_path}/c", "--out", str(tmp_path / "run"))
    assert code == 2 and str(bad) in err and message.lower() in err.lower()
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_train_then_generate_then_corrupt_checkpoint(capsys, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--device", "cpu"]
    for o in tiny_overrides + ["train.steps=3"]:
        args += ["--set", o]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "val loss" in out
    code, out, _ = run_cli(capsys, "generate", "--ckpt", str(run), "--prompt", "the king",
                           "--max-new-tokens", "10", "--device", "cpu")
    assert code == 0 and out.startswith("the king")

    (run / "checkpoints" / "step-3" / "meta.json").write_text("{broken")
    code, _, err = run_cli(capsys, "generate", "--ckpt", str(run), "--device", "cpu")
    assert code == 2 and "meta.json: corrupt" in err


def test_missing_cuda_is_a_clear_error(capsys, tiny_overrides):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["train", "--device", "cuda"]
    for o in tiny_overrides:
        if not o.startswith("train.device"):
            args += ["--set", o]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "CUDA is not available" in err


def test_pipeline_flags_reach_the_config_and_need_torchrun(capsys):
    code, _, err = run_cli(capsys, "train", "--pp", "2", "--virtual-stages", "2",
                           "--no-pp-cache", "--set", "residual.kind=block")
    assert code == 2 and "torchrun --standalone --nproc-per-node 2" in err
    assert err.strip().count("\n") == 0
    code, _, err = run_cli(capsys, "train", "--pp", "2", "--parallel", "dp")
    assert code == 2 and "cannot be combined with parallel.mode = dp" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "attnres.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("compare", "train", "generate", "bench"):
        assert command in out.stdout


BAD_VALUES = ["optim.grad_clip=-1", "train.ckpt_every=-1", "train.eval_every=0",
              "model.max_seq_len=-3", "model.max_seq_len=100000", "sched.decay_frac=2",
              "sched.warmup_steps=500", "optim.lr=nan", "data.vocab_size=-5"]


@pytest.mark.parametrize("override", BAD_VALUES)
def test_bad_values_are_refused_with_one_line(capsys, tmp_path, tiny_overrides, override):
    """Refused when the config is loaded: nothing trains, nothing is written."""
    args = ["train", "--out", str(tmp_path / "run")]
    for o in tiny_overrides + ["train.steps=20", override]:
        args += ["--set", o]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert override.split("=")[0] in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_continues_in_its_folder_and_refuses_unsafe_overrides(capsys, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    assert run_cli(capsys, "train", "--out", str(run), *sets, "--set", "train.steps=2")[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--set", "optim.lr=0.01")
    assert code == 2 and "optim.lr" in err and err.strip().count("\n") == 0, err
    # a safe override applies, and the run continues in the checkpoint's own folder (no --out)
    assert run_cli(capsys, "train", "--resume", str(run), "--set", "train.steps=4")[0] == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-4"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]     # each step logged once
