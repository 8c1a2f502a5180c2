"""Parallelism applied from outside the models (docs/DISTRIBUTED.md); only this package sets up
torch.distributed.

- `pp_plan`: the static plan of Block AttnRes traffic under interleaved pipelines
  (docs/THEORY.md#cross-stage-caching; pure Python): `pp_plan`, `simulate`, exact block-vector counts.
- `pipeline`: the pipelined decoder with cross-stage caching (`PipelineRunner`, `split_stages`).
- `distributed`: the process group, DDP / FSDP2 wrapping and the trainer's `Parallel` helper.
- `dist_muon`: owner-compute Muon for DDP (`ShardedMuon`).
- `pp_train`: the trainer's `PipelineParallel` helper (reductions, checkpoint gather and split).
"""

from .pp_plan import (  # first: pipeline imports it
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
from .distributed import (
    MODES,
    Parallel,
    World,
    cleanup,
    fsdp_units,
    init_distributed,
    is_main,
    parallelize,
    world,
)
from .dist_muon import ShardedMuon, assign_owners, shard_muon
from .pipeline import BlockCache, PipelineChunk, PipelineRunner, payload_header, split_stages
from .pp_train import PipelineParallel

__all__ = [
    "MODES",
    "BlockCache",
    "Chunk",
    "PPPlan",
    "Parallel",
    "PipelineChunk",
    "PipelineParallel",
    "PipelineRunner",
    "ShardedMuon",
    "SimResult",
    "Transition",
    "World",
    "aligned_counts",
    "assign_owners",
    "chunk_bounds",
    "cleanup",
    "count_block_vectors",
    "fsdp_units",
    "init_distributed",
    "is_main",
    "parallelize",
    "payload_header",
    "pp_plan",
    "shard_muon",
    "simulate",
    "split_stages",
    "world",
]
