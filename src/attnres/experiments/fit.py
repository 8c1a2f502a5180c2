"""Scaling-law arithmetic: power-law fits L = A·C^(−α) and the compute advantage ([AR] §5.1).

Pure math on numbers (numpy only). Compute C is in PFLOP/s-days throughout, as in the paper's
Fig. 4; `flops_to_pfs_days` converts from FLOPs. The compute advantage of a variant over the
baseline at budget C0 is the baseline compute that reaches the variant's loss, divided by C0
(docs/TARGETS.md#a2-scaling-law-fits-and-compute-advantage):

    adv(C0) = C_base(L_var(C0)) / C0,    C_base(L) = (A_b / L)^(1/α_b).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PFLOP_S_DAY = 8.64e19  # FLOPs in one PFLOP/s-day: 1e15 FLOP/s × 86 400 s

Fit = tuple[float, float]  # (A, alpha) of L = A·C^(−alpha)


def flops_to_pfs_days(flops: float) -> float:
    return flops / PFLOP_S_DAY


def fit_power_law(C: Sequence[float], L: Sequence[float]) -> Fit:
    """Least squares on (log C, log L): log L = log A − α·log C. Needs ≥ 2 distinct C."""
    c = np.asarray(C, dtype=np.float64)
    loss = np.asarray(L, dtype=np.float64)
    if c.shape != loss.shape or c.ndim != 1:
        raise ValueError(f"C and L must be 1-D and of equal length, got {c.shape} and {loss.shape}")
    if np.any(c <= 0) or np.any(loss <= 0):
        raise ValueError("a power-law fit needs positive compute and loss values")
    if len(np.unique(c)) < 2:
        raise ValueError("a power-law fit needs at least two distinct compute values")
    slope, intercept = np.polyfit(np.log(c), np.log(loss), 1)
    return float(np.exp(intercept)), float(-slope)


def loss_at(A: float, alpha: float, C: float | np.ndarray) -> float | np.ndarray:
    return A * np.power(C, -alpha)


def compute_for_loss(A: float, alpha: float, L: float | np.ndarray) -> float | np.ndarray:
    """The compute at which L = A·C^(−α) reaches L: (A/L)^(1/α)."""
    return np.power(A / L, 1.0 / alpha)


def advantage(base: Fit, variant: Fit, C0: float) -> float:
    """Compute multiplier of `variant` over `base` at budget C0: C_base(L_var(C0)) / C0."""
    return float(compute_for_loss(*base, loss_at(*variant, C0)) / C0)


def mean_points(points_by_seed: Mapping[int, Sequence[tuple[float, float]]],
                seeds: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-size means over seeds: the i-th point of every seed is the same size (same C).

    `seeds` may repeat a seed (a bootstrap resample); it defaults to every seed once."""
    seeds = list(points_by_seed) if seeds is None else list(seeds)
    arr = np.array([points_by_seed[s] for s in seeds], dtype=np.float64)  # [n_seeds, n_sizes, 2]
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise ValueError("every seed needs the same number of (C, L) points")
    mean = arr.mean(axis=0)
    return mean[:, 0], mean[:, 1]


def bootstrap_advantage(base_by_seed: Mapping[int, Sequence[tuple[float, float]]],
                        variant_by_seed: Mapping[int, Sequence[tuple[float, float]]],
                        C0: float, n_boot: int = 2000, level: float = 0.95,
                        rng_seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap of `advantage` over seeds.

    Each input maps a seed to its (C, L) points, one per model size in the same order. Seeds
    are resampled with replacement, paired across the two arms (a seed fixes the backbone
    initialisation and the data order of both); each resample averages the points per size,
    refits both power laws and recomputes the advantage at C0. With k seeds there are only
    C(2k−1, k) distinct resamples, so with 2 seeds the interval is coarse.
    """
    seeds = sorted(set(base_by_seed) & set(variant_by_seed))
    if not seeds:
        raise ValueError("the baseline and the variant share no seed")
    estimate = advantage(fit_power_law(*mean_points(base_by_seed, seeds)),
                         fit_power_law(*mean_points(variant_by_seed, seeds)), C0)
    rng = np.random.default_rng(rng_seed)
    values = np.empty(n_boot)
    for i in range(n_boot):
        pick = [seeds[j] for j in rng.integers(0, len(seeds), size=len(seeds))]
        values[i] = advantage(fit_power_law(*mean_points(base_by_seed, pick)),
                              fit_power_law(*mean_points(variant_by_seed, pick)), C0)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"estimate": estimate, "low": float(low), "high": float(high), "level": level,
            "n_boot": n_boot, "n_seeds": len(seeds)}
