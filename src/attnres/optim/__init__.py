"""Optimisation (docs/OPTIM.md): Muon, tag-based routing to Muon / AdamW, LR schedules."""

from .muon import (
    NS_COEFFS,
    Muon,
    build_muon,
    rms_scale,
    torch_muon_available,
    zeropower_newton_schulz,
)
from .routing import HybridOptimizer, build_optimizer, route_parameters
from .schedule import (
    build_scheduler,
    constant_multiplier,
    cosine_multiplier,
    default_warmup,
    make_multiplier,
    wsd_multiplier,
)

__all__ = [
    "NS_COEFFS",
    "HybridOptimizer",
    "Muon",
    "build_muon",
    "build_optimizer",
    "build_scheduler",
    "constant_multiplier",
    "cosine_multiplier",
    "default_warmup",
    "make_multiplier",
    "rms_scale",
    "route_parameters",
    "torch_muon_available",
    "wsd_multiplier",
    "zeropower_newton_schulz",
]
