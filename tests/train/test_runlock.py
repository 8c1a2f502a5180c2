"""One writer per run folder (docs/RELIABILITY.md): a held lock refuses, a dead holder's is taken."""

import json
import os
import socket
import subprocess
import sys

import pytest

from attnres.train.runlock import RunLocked, run_lock


def test_a_held_lock_refuses_a_second_writer_with_one_line(tmp_path):
    # the holder is another process, as a second `attnres train` would see it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from attnres.train.runlock import run_lock\n"
         f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as err:
            with run_lock(tmp_path):
                pass
        assert str(tmp_path) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):   # the kernel dropped the dead holder's flock
        pass


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                "started": "2026-01-01T00:00:00Z"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert "taking over the lock" in capsys.readouterr().err
