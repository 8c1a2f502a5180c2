"""Parallelism applied from outside the models (STYLE.md): the pipeline plan of Block AttnRes
(`pp_plan`, spec attnres.md §11). Only this package sets up torch.distributed."""

from .pp_plan import (
    Chunk,
    PPPlan,
    SimResult,
    Transition,
    aligned_counts,
    chunk_bounds,
    count_block_vectors,
    pp_plan,
    simulate,
)

__all__ = [
    "Chunk",
    "PPPlan",
    "SimResult",
    "Transition",
    "aligned_counts",
    "chunk_bounds",
    "count_block_vectors",
    "pp_plan",
    "simulate",
]
