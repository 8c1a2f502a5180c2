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
    for command in ("compare", "train", "generate", "convert", "bench"):
        assert command in out.stdout


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


# --- bad input: one table, every case one line and a non-zero exit ---------------------------

def _train(*overrides, steps=20):
    def argv(tmp, tiny):
        sets = [a for o in tiny + [f"train.steps={steps}", *overrides] for a in ("--set", o)]
        return ["train", "--out", str(tmp / "run"), *sets]
    return argv


def _with_config(name, content):
    def argv(tmp, tiny):
        path = tmp / name
        path.write_bytes(content)
        return ["train", "--config", str(path), *_train()(tmp, tiny)[1:]]
    return argv


def _args(*extra, command="train"):
    def argv(tmp, tiny):
        if command == "generate":
            return ["generate", "--ckpt", str(tmp / "no-run"), *extra]
        return [*_train()(tmp, tiny), *extra]
    return argv


def _compare(*extra):
    def argv(tmp, tiny):
        source, cache = (next(o.split("=", 1)[1] for o in tiny if o.startswith(k))
                         for k in ("data.source=", "data.cache_dir="))
        return ["compare", "--steps", "2", "--seed", "0", "--residual", "prenorm", "--data", source,
                "--out", str(tmp / "compare"), "--device", "cpu", "--no-progress", "--set",
                f"data.cache_dir={cache}", *extra]
    return argv


# (argv, exit code, what the one line on stderr must say, where the check is: "config" = before
# any data is read, so no token cache appears; "subprocess" = run as `python -m attnres.cli` as a
# user would (output, exit code and Python's own handlers exactly as they are), else in-process)
BAD_INPUT = {
    "unknown-key": (_train("train.stpes=3"), 2, "did you mean 'steps'", "config"),
    "grad_clip=-1": (_train("optim.grad_clip=-1"), 2, "optim.grad_clip must be >= 0", "config"),
    "ckpt_every=-1": (_train("train.ckpt_every=-1"), 2, "train.ckpt_every must be >= 0", "config"),
    "eval_every=0": (_train("train.eval_every=0"), 2, "train.eval_every must be >= 1", "config"),
    "max_seq_len=-3": (_train("model.max_seq_len=-3"), 2,
                       "model.max_seq_len must be in [0, 32768], got -3", "config"),
    # once hogged a core for 50 minutes: refused by config.check, in a subprocess with a timeout
    "max_seq_len=100000": (_train("model.max_seq_len=100000"), 2,
                           "model.max_seq_len must be in [0, 32768], got 100000",
                           "config subprocess"),
    "decay_frac=2": (_train("sched.decay_frac=2"), 2, "sched.decay_frac must be in [0, 1]", "config"),
    "warmup>steps": (_train("sched.warmup_steps=500"), 2,
                     "sched.warmup_steps: warmup (500) + decay (4, sched.decay_frac = 0.2) steps "
                     "exceed train.steps = 20", "config"),
    "lr=nan": (_train("optim.lr=nan"), 2, "optim.lr must be a finite number", "config"),
    "bpe-vocab=-5": (_train("data.tokenizer=bpe", "data.vocab_size=-5"), 2,
                     "data.vocab_size must be >= 0, got -5", "config"),
    # used to crash in the first forward with a traceback
    "seq_len>max_seq_len": (_train("model.max_seq_len=32", "train.seq_len=64"), 2,
                            "train.seq_len = 64 exceeds model.max_seq_len = 32", "config subprocess"),
    "seq_len>preset": (_train("train.seq_len=200"), 2,
                       "train.seq_len = 200 exceeds model.max_seq_len = 128 (preset tiny)", ""),
    "yaml-list": (_with_config("c.yaml", b"- train\n- model\n"), 2,
                  "expected a table of sections at the top level, got a list", "config"),
    "binary-config": (_with_config("c.toml", b"\x00\xff\xfe\x00binary"), 2,
                      "not a UTF-8 text file", "config subprocess"),
    # docs/RELIABILITY.md: an empty config file is an error, not a silent run on the defaults
    "empty-config": (_with_config("c.toml", b""), 2, "empty config file", "config"),
    "comments-only-yaml": (_with_config("c.yaml", b"# nothing\n"), 2, "empty config file", "config"),
    "missing-config": (lambda tmp, tiny: ["train", "--config", str(tmp / "nope.toml")], 2,
                       "config file not found", "config"),
    "generate-top-k=0": (_args("--top-k", "0", command="generate"), 2, "--top-k must be >= 1",
                         "config subprocess"),
    "generate-max-new-tokens=-5": (_args("--max-new-tokens", "-5", command="generate"), 2,
                                   "--max-new-tokens must be >= 0", "config"),
    "generate-temperature=-1": (_args("--temperature", "-1", command="generate"), 2,
                                "--temperature must be >= 0", "config"),
    "out-under-proc": (lambda tmp, tiny: [*_train()(tmp, tiny), "--out", "/proc/x"], 2,
                       "/proc/x", ""),
    "device-mps": (_args("--device", "mps"), 2, "device 'mps': unsupported; use cpu or cuda",
                   "config subprocess"),
    "device-foo": (_args("--device", "foo"), 2, "device 'foo': not a device name", "config"),
    "bench-threads=-1": (lambda tmp, tiny: ["bench", "--threads", "-1", "--quick"], 2,
                         "--threads must be >= 0", "config"),
    "device-cuda-absent": (_args("--device", "cuda"), 2, "CUDA is not available", "config"),
    "compare-seq_len>preset": (_compare("--seq-len", "200"), 2,
                               "train.seq_len = 200 exceeds model.max_seq_len = 128 (preset tiny)",
                               ""),
    # docs/RELIABILITY.md: accepted with a warning (it is one block); the run trains
    "block_size>depth": (_train("residual.kind=block", "residual.block_size=9", steps=1), 0,
                         "warning: residual.block_size = 9 is more than the model's 4 sublayers",
                         "subprocess"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_a_nonzero_exit(case, capsys, tmp_path, tiny_overrides,
                                                  monkeypatch):
    build, want_code, message, how = BAD_INPUT[case]
    if case == "device-cuda-absent":  # in-process, so a machine with CUDA runs it too
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = build(tmp_path, tiny_overrides)
    if "subprocess" in how:
        proc = subprocess.run([sys.executable, "-m", "attnres.cli", *argv], capture_output=True,
                              text=True, timeout=120)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        try:
            code, out, err = run_cli(capsys, *argv)
        except BaseException as exc:  # at the command line this would be a traceback
            pytest.fail(f"{case}: {type(exc).__name__} escaped main(): {exc}")
    assert code == want_code, (case, code, err)
    assert "Traceback" not in out + err, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    if want_code != 0:
        assert err.startswith(f"attnres {argv[0]}: error: "), err
        assert out == "" and not (tmp_path / "run").exists(), (out, list(tmp_path.iterdir()))
    if "config" in how:  # refused before any data was read
        assert not (tmp_path / "tokens").exists()
