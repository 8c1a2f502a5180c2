"""What every benchmark times with: a device sync around each timed region, and the statistics
of arms measured side by side (docs/BENCHMARKS.md: read the paired ratios, not the times)."""

from __future__ import annotations

import statistics

import torch


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued kernels (CUDA), so that a wall-clock interval covers them."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_median(times: list[float], base: list[float]) -> float:
    """Median over rounds of this round's time over the base arm's time in the same round."""
    return statistics.median(t / b for t, b in zip(times, base))


def iqr(times: list[float]) -> float:
    """Interquartile range (0 for fewer than two samples)."""
    if len(times) < 2:
        return 0.0
    q = statistics.quantiles(times, n=4)
    return q[2] - q[0]
