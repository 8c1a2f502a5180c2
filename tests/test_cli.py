"""The command line: user errors are one line and a non-zero exit; train/generate work."""

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
                           "--no-pp-cache", "--set", "residual.kind=attnres")
    assert code == 2 and "torchrun --standalone --nproc-per-node 2" in err
    assert err.strip().count("\n") == 0
    code, _, err = run_cli(capsys, "train", "--pp", "2", "--parallel", "dp")
    assert code == 2 and "cannot be combined with parallel.mode = dp" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "attnres.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("compare", "train", "generate", "bench"):
        assert command in out.stdout
