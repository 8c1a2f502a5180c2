"""Peak memory of a callable and the bytes autograd saves for backward, on CPU or an accelerator."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile


def measure_peak(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak bytes allocated on `device` while `fn()` runs, above the level at entry.

    CUDA (and other accelerators) use the caching allocator's peak counter. The CPU has no such
    counter, so the allocation timeline is rebuilt from the profiler's per-allocation records:
    the running sum of the signed sizes in time order starts at the entry level (0), and its
    maximum is the peak. Frees of tensors made before entry count as negative, as they should.
    """
    device = torch.device(device)
    if device.type == "cpu":
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        return _cpu_peak(prof)
    mem = torch.cuda if device.type == "cuda" else torch.accelerator
    mem.synchronize(device)
    base = mem.memory_allocated(device)
    mem.reset_peak_memory_stats(device)
    fn()
    mem.synchronize(device)
    return max(mem.max_memory_allocated(device) - base, 0)


@contextlib.contextmanager
def _quiet_native_stderr():
    """The profiler's native layer prints a trace line on every start and stop (to fd 2, past
    Python's sys.stderr), which would bury a benchmark's table; silence fd 2 meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(prof) -> int:
    # `prof.events()` folds allocations into the op that made them and keeps only the
    # unattributed frees as "[memory]" events; the raw Kineto results keep every record.
    records = sorted(
        (e.start_ns(), k, e.nbytes())
        for k, e in enumerate(prof.profiler.kineto_results.events())
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    level = peak = 0
    for _, _, nbytes in records:
        level += nbytes
        peak = max(peak, level)
    return peak


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while `fn()` runs.

    Storages of `exclude` (typically the inputs, which stay alive anyway) are not counted, so
    the result is what backward keeps alive beyond them. A storage saved several times, or
    through several views, counts once.
    """
    seen = {t.untyped_storage().data_ptr() for t in exclude}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
