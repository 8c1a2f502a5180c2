"""Two ranks of `attnres train --parallel dp` on a corpus with an empty token cache: the corpus
is tokenised once (the cache's file lock; docs/DATA.md#the-token-cache) and both ranks finish."""

import json
import sys

import pytest
import torch.distributed as dist

from attnres.train.metrics import read_metrics
from two_ranks import launch_command

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def test_two_ranks_tokenise_a_fresh_corpus_once(tmp_path, tiny_overrides):
    cache = tmp_path / "tokens"             # the cache_dir of tiny_overrides: not there yet
    assert not cache.exists()
    run = tmp_path / "run"
    sets = [a for o in tiny_overrides + ["train.steps=2"] for a in ("--set", o)]
    pids = launch_command([sys.executable, "-m", "attnres.cli", "train", "--parallel", "dp",
                           "--out", str(run), *sets], tmp_path, timeout_s=180)
    logs = [(tmp_path / f"rank{r}.log").read_text() for r in range(2)]
    assert all("Traceback" not in log and "rebuilding" not in log for log in logs), logs
    # one entry, no half-built folder left, and its lock file records exactly one build
    entries = [p.name for p in cache.iterdir() if not p.name.startswith(".")]
    hidden = [p.name for p in cache.iterdir() if p.name.startswith(".")]
    assert len(entries) == 1 and hidden == [f".{entries[0]}.lock"], (entries, hidden)
    builds = [json.loads(line) for line in (cache / hidden[0]).read_text().splitlines()]
    assert len(builds) == 1 and builds[0]["built_by_pid"] in pids, (builds, pids)
    # both ranks trained the 2 steps (rank 0 writes the run folder, rank 1 exited 0 after it)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]
    assert json.loads((run / "result.json").read_text())["step"] == 2
    assert "val loss" in logs[0] and "val loss" not in logs[1]
