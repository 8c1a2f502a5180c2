"""Data parallelism applied from outside the model (docs/DISTRIBUTED.md): the process group torchrun
describes, DDP / FSDP2 wrapping, and the cross-rank reductions and state gathers the trainer needs.

The models know nothing of torch.distributed; this package alone sets it up (here, and
`dist_muon.py` for the owner-compute Muon; `attnres.optim.Muon` only recognises DTensor units).
`Parallel("none")` is the single-process run: every method is then the identity and nothing
communicates.

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
unit): every rank takes part in gathering the full weights and optimizer state, rank 0 writes
them with `attnres.train.checkpoint`, and a resume copies each rank's shard back out of them.
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


def parallelize(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """Apply `mode` to `model` (already on `device`); returns the module to run training
    forwards through: `model` itself for none and fsdp (sharded in place), a DDP wrapper for dp.
    """
    if mode not in MODES:
        raise ValueError(f"parallel mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        return model
    if not dist.is_initialized():
        raise RuntimeError("parallelize: call init_distributed() first")
    if mode == "dp":
        import inspect
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device.type == "cuda" else None
        # buffers (MoE bias, counts, max logits) start equal and are kept equal by the trainer's
        # reductions: no broadcast before each forward (newer torch renamed the keyword)
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in \
            inspect.signature(DDP.__init__).parameters else "broadcast_buffers"
        return DDP(model, device_ids=ids, static_graph=True, **{no_sync: False})
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


def gather_full(obj: Any) -> Any:
    """`obj` (nested dicts / lists / tuples) with every DTensor replaced by its full tensor.
    Collective: every rank calls it on the same structure, in the same order."""
    if _is_dtensor(obj):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: gather_full(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather_full(v) for v in obj)
    return obj


@torch.no_grad()
def load_full_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into `model`'s parameters and buffers; a DTensor keeps its shard only."""
    own = model.state_dict()
    for name, value in tensors.items():
        target = own[name]
        if _is_dtensor(target):
            target.to_local().copy_(local_shard(value, target))
        else:
            target.copy_(value)


@torch.no_grad()
def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After loading a full (gathered) state dict: a state tensor of a DTensor parameter with the
    parameter's full shape becomes the matching DTensor shard (scalars such as `step` stay)."""
    from torch.distributed.tensor import DTensor
    for opt in getattr(optimizer, "optimizers", {"": optimizer}).values():
        for p, state in opt.state.items():
            if not _is_dtensor(p):
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and not _is_dtensor(value) \
                        and value.shape == p.shape:
                    state[key] = DTensor.from_local(local_shard(value, p), p.device_mesh,
                                                    p.placements, shape=p.shape, stride=p.stride())


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


class StateSnapshot:
    """A gathered state dict behind the `state_dict()` call `save_checkpoint` makes."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _FullLoader:
    """`load_state_dict` with full tensors for a sharded model (`checkpoint.load_weights`
    checks names and shapes against `state_dict()`, whose DTensors report full shapes)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, tensors: dict) -> None:
        load_full_state_dict(self.model, tensors)


# --- what the trainer uses ---------------------------------------------------------------------

class Parallel:
    """The trainer's view of data parallelism: join, wrap, reduce, gather for checkpoints.

    `Parallel("none")` never touches torch.distributed and every method is the identity, so a
    single-process run is unchanged. For dp/fsdp it joins torchrun's process group.
    """

    def __init__(self, mode: str = "none", backend: str = "auto",
                 device: torch.device | None = None):
        if mode not in MODES:
            raise ValueError(f"parallel mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        device_type = device.type if device is not None else None
        self.world = init_distributed(backend, device_type) if mode != "none" else World()

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    @property
    def data_world(self) -> World:
        """The ranks that split the global batch: all of them."""
        return self.world

    def device(self, device: torch.device) -> torch.device:
        return local_device(device) if self.enabled else device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        return parallelize(model, self.mode, device)

    def trainable(self, model: nn.Module) -> nn.Module:
        """What the optimizer is built over: the whole model."""
        return model

    def shard_muon(self, optimizer, muon_dist: str):
        """`sharded` owner-compute Muon (docs/OPTIM.md#distributed-muon) for dp; `replicated` is the
        default."""
        if muon_dist != "sharded" or not self.enabled:
            return optimizer
        from .dist_muon import shard_muon
        return shard_muon(optimizer, self.world.rank, self.world.size)

    # reductions over the data-parallel group (None in a single process: nothing to reduce)
    @property
    def sum_(self):
        return _all_reduce_sum if self.enabled else None

    @property
    def max_(self):
        return _all_reduce_max if self.enabled else None

    def mean(self, value: float) -> float:
        """The mean of a per-rank scalar (equal shards of the global batch: the global mean)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t) / self.world.size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")

    # state for checkpoints: one full, world-size independent copy
    def snapshot(self, model: nn.Module, optimizer, scheduler) -> tuple[Any, Any, Any]:
        """Full model, optimizer and scheduler state as objects with `state_dict()`. Collective
        for dp/fsdp (every rank calls it); the objects themselves in a single process."""
        if not self.enabled:
            return model, optimizer, scheduler
        model_state = {k: v.detach() for k, v in gather_full(model.state_dict()).items()}
        return StateSnapshot(model_state), StateSnapshot(gather_full(optimizer.state_dict())), scheduler

    def local_optimizer_state(self, full: dict, optimizer, model: nn.Module) -> dict:
        """What this rank's optimizer loads of a checkpoint's (full) optimizer state."""
        return full

    def local_scheduler_state(self, full: dict, optimizer) -> dict:
        return full

    def loadable(self, model: nn.Module):
        """What `checkpoint.load_weights` loads full weights into."""
        return _FullLoader(model) if self.sharded else model

    def after_optimizer_load(self, optimizer) -> None:
        if self.sharded:
            shard_optimizer_state(optimizer)

    def full_weights(self, modules: Iterable[nn.Module]):
        return full_weights(modules) if self.sharded else contextlib.nullcontext()


def _all_reduce_sum(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _all_reduce_max(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
