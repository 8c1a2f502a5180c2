"""SIGINT / SIGTERM on a real `attnres train` process: the step finishes, a checkpoint is saved,
one line says where and how to resume, the exit status is 130 / 143; the resume continues
from that step (docs/RELIABILITY.md#interrupts)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from attnres.cli import main
from attnres.train.metrics import trim_metrics


def _train_steps(run) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]


def _wait_for_steps(proc, run, n: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        if (run / "metrics.jsonl").is_file() and len(_train_steps(run)) >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"no {n} steps within {timeout_s} s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_one_checkpoint_and_the_run_resumes(signum, tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    sets = [a for o in tiny_overrides + ["train.steps=100000", "train.ckpt_every=0"]
            for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "attnres.cli", "train", "--out", str(run), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(proc, run, 3)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, (proc.returncode, err)    # 130 / 143
    assert "Traceback" not in out + err, err
    assert out == ""
    # the note when the signal arrives, then the one line that says where and how to resume
    note, last = err.strip().splitlines()
    assert note.startswith(f"attnres train: warning: {name}: stopping after this step"), note
    assert last.startswith(f"attnres train: interrupted by {name} at step "), last
    step = int(last.split(" at step ")[1].split(";")[0])
    assert step >= 3 and f"checkpoint saved to {run / 'checkpoints' / f'step-{step}'};" in last
    assert last.endswith(f"resume with: attnres train --resume {run}")
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step}"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", f"step-{step}"]
    before = (run / "metrics.jsonl").read_text().splitlines()
    assert _train_steps(run) == list(range(1, step + 1))

    # the resume (no --out: the checkpoint's own folder) continues at step + 1 and finishes
    code = main(["train", "--resume", str(run), "--set", f"train.steps={step + 2}"])
    assert code == 0, capsys.readouterr().err
    assert "val loss" in capsys.readouterr().out
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step + 2}"
    assert _train_steps(run) == list(range(1, step + 3))                  # each step once
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[:len(before)] == before                                   # the log is continued
    assert json.loads((run / "result.json").read_text())["step"] == step + 2


def test_a_killed_run_resumes_from_its_checkpoint_and_logs_each_step_once(tmp_path, tiny_overrides,
                                                                         capsys):
    """SIGKILL (no handler runs): the steps logged after the last checkpoint are dropped on
    resume, and the dead process's lock is taken over with a warning."""
    run = tmp_path / "run"
    sets = [a for o in tiny_overrides + ["train.steps=100000", "train.ckpt_every=2"]
            for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "attnres.cli", "train", "--out", str(run), *sets],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_steps(proc, run, 5)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    logged = _train_steps(run)
    assert saved >= 2 and saved % 2 == 0 and logged == list(range(1, logged[-1] + 1))
    assert logged[-1] >= max(saved, 5)  # usually beyond the checkpoint: steps logged twice if kept
    with open(run / "metrics.jsonl", "a") as f:  # and a kill in the middle of a write
        f.write('{"kind": "train", "step": ')
    end = logged[-1] + 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", f"train.steps={end}"]) == 0
    err = capsys.readouterr().err
    assert "taking over the lock" in err and "no longer running" in err, err
    assert _train_steps(run) == list(range(1, end + 1))                   # each step once
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{end}"


def test_trim_metrics_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    """What a resume from step 4 does to the log of a run killed at step 7 mid-write."""
    lines = [json.dumps({"kind": k, "step": s}) for s in range(1, 8) for k in ("train", "eval")]
    (tmp_path / "metrics.jsonl").write_text("\n".join(
        [json.dumps({"kind": "params", "step": 0}), *lines, json.dumps({"kind": "final", "step": 7}),
         '{"kind": "train", "st']))
    trim_metrics(tmp_path, 4)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in kept] == \
        [("params", 0)] + [(k, s) for s in range(1, 5) for k in ("train", "eval")]
