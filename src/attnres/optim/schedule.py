"""Learning-rate schedules (docs/OPTIM.md#learning-rate-schedules): multipliers of the peak LR at
step t = 0..T−1.

One multiplier drives every parameter group (Muon and AdamW alike). `build_scheduler` wraps it
in `torch.optim.lr_scheduler.LambdaLR`; the multiplier is a plain function, so the scheduler's
state dict holds only its counters and the schedule itself always comes from the current
arguments: a WSD run can branch its decay phase from a stable-phase checkpoint with a different
total_steps (pass warmup_steps explicitly then, since the default warmup depends on T).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

KINDS = ("wsd", "cosine", "constant")
WSD_SHAPES = ("cosine", "linear", "sqrt")


def default_warmup(total: int) -> int:
    """W = max(1, round(0.02·T)) (Python's round: halves go to the even integer)."""
    return max(1, round(0.02 * total))


def wsd_multiplier(
    t: int,
    total: int,
    warmup: int,
    decay_frac: float = 0.2,
    final_ratio: float = 0.1,
    shape: str = "cosine",
) -> float:
    """Warmup–stable–decay: linear warmup over W steps, 1 until T−D, then decay to r over D.

    D = round(decay_frac·T); in the decay phase p = (t − (T−D) + 1)/D ∈ (0, 1] and the
    multiplier is 1 − (1−r)·p (linear), r + (1−r)·(1 + cos πp)/2 (cosine) or 1 − (1−r)·√p
    (sqrt), so the last step t = T−1 gets exactly r. Steps past T−1 stay at r.
    """
    if shape not in WSD_SHAPES:
        raise ValueError(f"unknown WSD decay shape {shape!r}; expected one of {WSD_SHAPES}")
    if t < warmup:
        return (t + 1) / warmup
    decay = round(decay_frac * total)
    start = total - decay
    if decay == 0 or t < start:
        return 1.0
    p = min((t - start + 1) / decay, 1.0)
    r = final_ratio
    if shape == "linear":
        return 1.0 - (1.0 - r) * p
    if shape == "sqrt":
        return 1.0 - (1.0 - r) * math.sqrt(p)
    return r + (1.0 - r) * (1.0 + math.cos(math.pi * p)) / 2


def cosine_multiplier(t: int, total: int, warmup: int, final_ratio: float = 0.1) -> float:
    """Linear warmup over W steps, then r + (1−r)·(1 + cos(π·(t−W+1)/(T−W)))/2 down to r at T−1."""
    if t < warmup:
        return (t + 1) / warmup
    p = min((t - warmup + 1) / max(total - warmup, 1), 1.0)
    return final_ratio + (1.0 - final_ratio) * (1.0 + math.cos(math.pi * p)) / 2


def constant_multiplier(t: int, total: int, warmup: int) -> float:
    """Linear warmup over W steps, then 1."""
    return (t + 1) / warmup if t < warmup else 1.0


def make_multiplier(
    kind: str = "wsd",
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_frac: float = 0.2,
    final_ratio: float = 0.1,
    shape: str = "cosine",
) -> Callable[[int], float]:
    """Check the arguments and return t ↦ multiplier for schedule `kind` (see `KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {KINDS}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = default_warmup(total_steps) if warmup_steps is None else warmup_steps
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")
    if kind == "wsd":
        if shape not in WSD_SHAPES:
            raise ValueError(f"unknown WSD decay shape {shape!r}; expected one of {WSD_SHAPES}")
        if not 0.0 <= decay_frac <= 1.0:
            raise ValueError(f"decay_frac must be in [0, 1], got {decay_frac}")
        if warmup + round(decay_frac * total_steps) > total_steps:
            raise ValueError(
                f"warmup ({warmup}) + decay ({round(decay_frac * total_steps)}) steps exceed "
                f"total_steps ({total_steps})"
            )

        def multiplier(t: int) -> float:
            return wsd_multiplier(t, total_steps, warmup, decay_frac, final_ratio, shape)
    elif kind == "cosine":
        def multiplier(t: int) -> float:
            return cosine_multiplier(t, total_steps, warmup, final_ratio)
    else:
        def multiplier(t: int) -> float:
            return constant_multiplier(t, total_steps, warmup)
    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str = "wsd",
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    decay_frac: float = 0.2,
    final_ratio: float = 0.1,
    shape: str = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` with one multiplier for all groups; the peak LR is each group's current "lr".

    Construction sets the LR of step 0; call `scheduler.step()` after each `optimizer.step()`.
    `state_dict()` / `load_state_dict()` round-trip the step counter and LRs.
    """
    fn = make_multiplier(kind, total_steps=total_steps, warmup_steps=warmup_steps,
                         decay_frac=decay_frac, final_ratio=final_ratio, shape=shape)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)
