"""Data parallelism applied from outside the model (docs/DISTRIBUTED.md): the process group torchrun
describes, DDP / FSDP2 wrapping (`apply_ddp`, `apply_fsdp`), and the collectives the trainer's
`attnres.parallel.parallelize` objects use.

The models know nothing of torch.distributed; this package alone sets it up (here, and
`dist_muon.py` for the owner-compute Muon; `attnres.optim.Muon` only recognises DTensor units).

Modes (`parallel.mode`):
- `dp`: `DistributedDataParallel` with `static_graph=True`. The first sublayer's AttnRes read
  has a single source and returns it as is, so its query and key-norm gain never get a gradient
  (invariant I7, docs/THEORY.md#invariants). A static graph lets DDP learn once, in the first step, which
  parameters are unused; they are left out of every later reduction and keep `grad = None`, as in
  a single-process run, so the optimizer states agree too (zero-filled gradients would give
  AdamW a state for them). It costs no per-step graph walk (`find_unused_parameters=True` does)
  and keeps the bucketed all-reduce overlapped with backward (zero-filling before a manual
  reduction would not). The set of used parameters is fixed by the configuration, never by the
  data: an MoE expert that gets no token still belongs to a used 3-D weight.
- `fsdp`: FSDP2 `fully_shard` on each decoder layer's mixer (`self_attn`) and FFN (`mlp`), then on
  the root, which keeps the embedding, head, norms and every AttnRes read. A decoder layer talks
  to the residual stream object, not through tensor arguments, and a read may use a neighbouring
  layer's read parameters (DenseFormer, two-phase AttnRes), so the layer itself is no FSDP unit:
  its mixer and FFN (all but a few vectors of its weights) are. Parameters become `DTensor`s
  sharded on dim 0; mixed precision stays off (autocast covers a bf16 compute dtype).

Checkpoints stay in the single-process format (docs/OPTIM.md#distributed-muon: full heavy-ball momentum per
unit): `attnres.parallel.checkpointer` gathers and restores them with
`torch.distributed.checkpoint.state_dict`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

MODES = ("none", "dp", "fsdp")
_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


def init_distributed(backend: str = "auto", device_type: str | None = None) -> World:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a no-op when one is already up.

    backend "auto" is nccl for CUDA training (`device_type`, default: cuda when available), else
    gloo. With nccl the current device becomes cuda:LOCAL_RANK. Without torchrun's variables
    this process is a world of one (a local store, no port), so `--parallel dp` also runs as a
    plain command.
    """
    if dist.is_initialized():
        return world()
    if backend == "auto":
        cuda = device_type == "cuda" if device_type else torch.cuda.is_available()
        backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=_TIMEOUT)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=_TIMEOUT)
    return world()


def world() -> World:
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    return world().rank == 0


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun's RANK) gives it, before any process group
    exists; 0 without a launcher."""
    return world().rank if dist.is_initialized() else int(os.environ.get("RANK", 0))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """cuda (any index) becomes cuda:LOCAL_RANK under a process group; CPU stays."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", world().local_rank)
    return device


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards separately: each decoder layer's mixer and FFN (the root takes the
    rest). A model without `layers` is sharded as one unit."""
    units = []
    for layer in getattr(model, "layers", []):
        units += [m for m in (getattr(layer, "self_attn", None), getattr(layer, "mlp", None))
                  if m is not None and any(True for _ in m.parameters())]
    return units


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` (on `device`) in `DistributedDataParallel`: the module to run training forwards
    through; `model` itself stays the unwrapped one."""
    import inspect
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index] if device.type == "cuda" else None
    # buffers (MoE bias, counts, max logits) start equal and are kept equal by the trainer's
    # reductions: no broadcast before each forward (newer torch renamed the keyword)
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in \
        inspect.signature(DDP.__init__).parameters else "broadcast_buffers"
    return DDP(model, device_ids=ids, static_graph=True, **{no_sync: False})


def apply_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """Shard `model` (on `device`) in place with FSDP2: each `fsdp_units` module, then the root.
    Returns `model`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    # FSDP2 registers new (DTensor) parameter objects: carry over the attributes set on the old
    # ones where they were created (the optimizer-group tags of attnres.tags)
    attrs = {name: dict(vars(p)) for name, p in model.named_parameters()}
    # A sublayer may return a view (the MoE reshapes its output); FSDP2 warns that an in-place op
    # on it would skip the pre-backward all-gather. The residual streams never write into a
    # sublayer output in place (tests/parallel compares every parameter with one process).
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world().size,))
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name, p in model.named_parameters():
        for key, value in attrs[name].items():
            setattr(p, key, value)
    return model


# --- DTensor helpers ---------------------------------------------------------------------------

def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def local_shard(full: torch.Tensor, like) -> torch.Tensor:
    """This rank's piece of the full tensor `full` under `like`'s (a DTensor's) placements, as a
    plain tensor. No communication: every rank holds `full`."""
    from torch.distributed.tensor import distribute_tensor
    full = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


@contextlib.contextmanager
def full_weights(modules: Iterable[nn.Module], name: str = "weight"):
    """Within the block, each module's sharded `name` parameter is replaced by a plain full copy
    (an all-gather); on exit every rank keeps its shard of the (possibly changed) copy. For
    whole-matrix edits outside forward, such as QK-Clip's per-head row scaling, which every rank
    performs identically."""
    swapped = []
    try:
        for m in modules:
            p = m._parameters.get(name)
            if p is not None and _is_dtensor(p):
                full = nn.Parameter(p.detach().full_tensor(), requires_grad=False)
                m._parameters[name] = full
                swapped.append((m, p, full))
        yield
    finally:
        with torch.no_grad():
            for m, p, full in swapped:
                p.to_local().copy_(local_shard(full.detach(), p))
                m._parameters[name] = p


def all_reduce_sum(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
