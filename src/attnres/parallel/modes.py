"""The `Parallel` objects `attnres.parallel.parallelize.parallelize` returns, one class per
mode (`Parallel` for one process, `DataParallel`, `FullyShardedParallel`; the pipeline's
`pp_train.PipelineParallel` builds on `Distributed`). Their interface is described in
`attnres.parallel.parallelize` and docs/DISTRIBUTED.md#parallelize-and-the-checkpointer."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from attnres.train.checkpoint import Checkpointer

from .distributed import (
    World,
    all_reduce_max,
    all_reduce_sum,
    apply_ddp,
    apply_fsdp,
    full_weights,
    init_distributed,
    local_device,
)


def compile_layers(model: nn.Module) -> nn.Module:
    """`torch.compile` each decoder layer's mixer and FFN in place (`nn.Module.compile`;
    docs/DISTRIBUTED.md#compile). Not the whole layer, as torchtitan does: its forward takes the
    residual stream, whose per-source caches are guarded by identity and would recompile every
    step; nor the PreNorms, whose ε differs per sublayer (one recompile each). The depth reads,
    norms, embedding and head run eagerly. Modules, parameter names and the checkpoint layout
    stay as they are. Returns `model`."""
    for layer in model.layers:
        layer.self_attn.compile()
        layer.mlp.compile()
    return model


def autocast_for(dtype: str, device_type: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the compute-dtype context: none for float32, else `torch.autocast`."""
    if dtype == "float32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type, dtype=getattr(torch, dtype))


class Parallel:
    """One process: no communication, every reduction the identity (the reference run)."""

    world = World()

    def __init__(self, model: nn.Module, cfg, device: torch.device):
        self.cfg = cfg
        self.device = self._join(cfg, device)
        self.model = model.to(self.device)
        self.autocast = autocast_for(cfg.train.dtype, self.device.type)
        if cfg.train.compile:                  # per decoder layer, before any wrapping
            compile_layers(self.model)
        self.net = self._apply(self.model)     # what training forwards run through

    def _join(self, cfg, device: torch.device) -> torch.device:
        return device

    def _apply(self, model: nn.Module) -> nn.Module:
        return model

    # --- who does what ------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    @property
    def data_world(self) -> World:
        """The ranks that split the global batch, and this rank's place among them."""
        return self.world

    def main_model(self) -> nn.Module | None:
        """The whole, current model on rank 0 (to run analyses on); None elsewhere."""
        return self.model if self.is_main else None

    def check_eval(self, batches) -> None:
        """Refuse evaluation batches this layout cannot run (one-line ConfigError)."""

    # --- training -----------------------------------------------------------------------------

    def build_optimizer(self, make: Callable):
        """The optimizer over what this rank trains; `make(params)` builds one."""
        return make(self.model)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor,
                         max_norm: float) -> tuple[float, float, dict]:
        """Loss and gradients of the global batch (this rank's slice: x, y), clipped to
        `max_norm` with the global norm. A non-finite loss skips the backward (norm NaN)."""
        with self.autocast():
            _, loss = self.net(x, y)
        value = self._mean(loss.item())        # the global batch's mean loss on every rank
        grad_norm = float("nan")
        if math.isfinite(value):               # a non-finite loss has no gradient worth computing
            loss.backward()
            params = [p for p in self.model.parameters() if p.grad is not None]
            grad_norm = self._scalar(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return value, grad_norm, {}

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self.autocast():
            _, loss = self.model(x, y)
        return loss.item()

    def full_weights(self, modules):
        return contextlib.nullcontext()

    # --- communication ------------------------------------------------------------------------

    reduce_sum = None                          # in-place all-reduces for the trainer's hooks
    reduce_max = None

    def any_rank(self, flag: bool) -> bool:
        """Whether any rank has `flag` set (collective)."""
        return flag

    def barrier(self) -> None:
        pass

    def _mean(self, value: float) -> float:
        return value

    def _scalar(self, t: torch.Tensor) -> float:
        return t.item()

    # --- checkpoints --------------------------------------------------------------------------

    def checkpointer(self, optimizer, scheduler) -> Checkpointer:
        return Checkpointer(self.model, optimizer, scheduler)


class Distributed(Parallel):
    """The modes under torchrun: join the process group; the reductions are all-reduces."""

    reduce_sum = staticmethod(all_reduce_sum)
    reduce_max = staticmethod(all_reduce_max)

    def _join(self, cfg, device: torch.device) -> torch.device:
        self.world = init_distributed(cfg.parallel.backend, device.type)
        return local_device(device)

    def any_rank(self, flag: bool) -> bool:
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        dist.barrier()

    def _mean(self, value: float) -> float:
        """Equal shards of the global batch: the mean of the ranks' means is the global one."""
        comm = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([value], dtype=torch.float64, device=comm)
        dist.all_reduce(t)
        return float(t) / self.world.size

    def checkpointer(self, optimizer, scheduler) -> Checkpointer:
        from .checkpointer import DistributedCheckpointer
        return DistributedCheckpointer(self.model, optimizer, scheduler, self.is_main,
                                       self.barrier, self.device)


class DataParallel(Distributed):
    """`parallel.mode = dp`: DDP over torchrun's world; each rank trains on its slice of the
    global batch and the gradients are averaged in backward (docs/DISTRIBUTED.md)."""

    def _apply(self, model: nn.Module) -> nn.Module:
        return apply_ddp(model, self.device)

    def build_optimizer(self, make: Callable):
        """`optim.muon_dist = sharded`: owner-compute Muon (docs/OPTIM.md#distributed-muon)."""
        optimizer = make(self.model)
        if self.cfg.optim.muon_dist != "sharded":
            return optimizer
        from .dist_muon import shard_muon
        return shard_muon(optimizer, self.world.rank, self.world.size)


class FullyShardedParallel(Distributed):
    """`parallel.mode = fsdp`: FSDP2; parameters, gradients and optimizer state are DTensor
    shards. Muon gathers each matrix itself (`attnres.optim.muon`)."""

    def _apply(self, model: nn.Module) -> nn.Module:
        return apply_fsdp(model, self.device)

    def main_model(self) -> nn.Module | None:
        return None                            # no rank holds the whole model

    def full_weights(self, modules):
        return full_weights(modules)

    def _scalar(self, t: torch.Tensor) -> float:
        return t.full_tensor().item()
