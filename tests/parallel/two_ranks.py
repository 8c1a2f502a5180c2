"""Helpers of the 2-process gloo tests: the launch and the comparisons.

A test file that launches ranks is also their worker script (`python <test file> <spec>`, with
torchrun's environment variables), so this module is imported both by pytest (the folder's
conftest puts it on sys.path) and by the workers (their script folder is sys.path[0])."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from attnres.train.metrics import read_metrics


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def final_state(run: Path, step: int) -> tuple[dict, dict]:
    """The weights and the trainer state (optimizer, scheduler, ...) saved at `step`."""
    from safetensors.torch import load_file
    from attnres.train.checkpoint import load_state
    where = run / "checkpoints" / f"step-{step}"
    return load_file(str(where / "model.safetensors")), load_state(where)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, spec: Path, timeout_s: float, port: int | None = None) -> None:
    """Run `python script spec` as ranks 0 and 1 of a gloo world on this host and fail with
    each rank's log tail unless both exit 0."""
    launch_command([sys.executable, script, str(spec)], spec.parent, timeout_s, port)


def launch_command(argv: list[str], log_dir: Path, timeout_s: float,
                   port: int | None = None) -> list[int]:
    """Run `argv` as ranks 0 and 1 (logs: `log_dir/rank<r>.log`); fail with each rank's log tail
    unless both exit 0; return their pids."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    logs = [log_dir / f"rank{r}.log" for r in range(2)]
    procs = []
    for r, log in enumerate(logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(argv, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                          stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:  # a rank that fails leaves the other waiting in a collective: stop both then
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline \
                and not any(p.poll() for p in procs):
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{log.read_text()[-4000:]}"
    return [p.pid for p in procs]
