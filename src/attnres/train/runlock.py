"""One writer per run folder: an exclusive `flock` on `<run>/.lock` (docs/RELIABILITY.md).

The kernel drops a `flock` when its process exits, however it exits, so a lock left by a dead
process is free to take; the JSON inside (pid, host, start time) is only there to name the
holder in the error message and to warn when a crashed run's lock is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the run proceeds as before
    fcntl = None


class RunLocked(RuntimeError):
    """The run folder is in use by another process; the message is one line naming it."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{run_dir}: in use by another attnres run ({_describe(_holder(fd))}); "
                            f"wait for it to finish or use another run folder") from None
        previous = _holder(fd)
        if previous.get("pid") and previous.get("host") == socket.gethostname() \
                and not _alive(previous["pid"]):
            print(f"attnres: warning: {path}: taking over the lock of {_describe(previous)}, "
                  f"which is no longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                                 ).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves nothing to warn about
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "holder unknown"
    return f"pid {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True
