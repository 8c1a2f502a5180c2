"""Parallelism applied from outside the models (docs/DISTRIBUTED.md); only this package sets up
torch.distributed.

- `parallelize`: the trainer's one entry, `parallelize(model, cfg, device)`, and the `Parallel`
  interface it returns (one class per mode: one process, DDP, FSDP2; pipeline in `pp_train`).
- `checkpointer`: dp / fsdp checkpoints through `torch.distributed.checkpoint.state_dict`.
- `pp_plan`: the static plan of Block AttnRes traffic under interleaved pipelines
  (docs/THEORY.md#cross-stage-caching; pure Python): `pp_plan`, `simulate`, exact block-vector counts.
- `pipeline`: the pipelined decoder with cross-stage caching (`PipelineRunner`, `split_stages`).
- `distributed`: the process group, DDP / FSDP2 wrapping (`apply_ddp`, `apply_fsdp`).
- `dist_muon`: owner-compute Muon for DDP (`ShardedMuon`).
- `pp_train`: `PipelineParallel` and its checkpointer (gather to and split from one process).
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
    World,
    apply_ddp,
    apply_fsdp,
    cleanup,
    fsdp_units,
    init_distributed,
    is_main,
    launch_rank,
    world,
)
from .dist_muon import ShardedMuon, assign_owners, shard_muon
from .pipeline import BlockCache, PipelineChunk, PipelineRunner, payload_header, split_stages
from .modes import DataParallel, FullyShardedParallel, Parallel
from .parallelize import parallelize
from .pp_train import PipelineParallel
from .checkpointer import DistributedCheckpointer

__all__ = [
    "MODES",
    "BlockCache",
    "Chunk",
    "DataParallel",
    "DistributedCheckpointer",
    "FullyShardedParallel",
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
    "apply_ddp",
    "apply_fsdp",
    "assign_owners",
    "chunk_bounds",
    "cleanup",
    "count_block_vectors",
    "fsdp_units",
    "init_distributed",
    "is_main",
    "launch_rank",
    "parallelize",
    "payload_header",
    "pp_plan",
    "shard_muon",
    "simulate",
    "split_stages",
    "world",
]
