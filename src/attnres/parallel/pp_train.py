"""The trainer's view of pipeline parallelism (`parallel.pp > 1`, docs/DISTRIBUTED.md).

`PipelineParallel` stands where `distributed.Parallel` stands for dp/fsdp: it joins torchrun's
process group (world size = P), wraps the model in a `PipelineRunner`, reduces the QK-Clip and
MoE statistics over the pipeline ranks, and turns checkpoints to and from the single-process
layout.

Data. Every rank takes the whole batch (the first stage embeds it, the last computes the loss);
the runner reports the batch's loss on every rank, so no reduction is needed for logging.

Statistics. A rank runs only its stage's attention and MoE layers; the other layers' buffers keep
their reset values (max logit −inf, counts 0). One all_reduce(MAX) of the packed max logits and
one all_reduce(SUM) of the expert counts over the pipeline ranks therefore give every rank the
whole model's statistics, and every rank applies the same QK-Clip scaling and bias update to
every layer (on layers it does not own this is harmless: their weights are refreshed from the
owners when a checkpoint is gathered).

Checkpoints (the single-process layout, so `attnres generate` and single-process resumes read
them). Saving is collective:
- weights: each rank sends its stage parameters to rank 0, which copies them into its own copy of
  the whole model (buffers are equal on every rank); rank 0's model is then the whole current
  model and is saved as is;
- optimizer: each rank's state dict, keyed by parameter and group *names*, is gathered to rank 0,
  merged and re-indexed in the layout of the optimizer a single process builds over the whole
  model (same inner optimizers, groups and parameter order); the LR scheduler's per-group lists
  likewise, by group name.
Resuming: every rank loads the full weights into its whole model and keeps, of the full optimizer
and scheduler state, the entries of its own parameters and groups.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .distributed import StateSnapshot, World, init_distributed, local_device
from .pipeline import PipelineRunner

# scheduler state entries with one value per optimizer param group (LambdaLR)
_PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")

Layout = dict[str, list[tuple[str, list[str]]]]   # inner optimizer -> [(group name, [param names])]


class PipelineParallel:
    """Pipeline parallelism for the trainer: P ranks, V virtual stages, M micro-batches.

    Args:
        P, V, cache, n_microbatches: as `PipelineRunner`.
        backend: torch.distributed backend ("auto": nccl for CUDA training, else gloo).
        device: the configured training device (cuda becomes cuda:LOCAL_RANK).
    """

    mode = "none"          # no data parallelism
    sharded = False
    enabled = True

    def __init__(self, P: int, V: int, cache: bool, n_microbatches: int, backend: str = "auto",
                 device: torch.device | None = None):
        from attnres.config import ConfigError
        self.P, self.V, self.cache, self.M = P, V, cache, n_microbatches
        if not dist.is_initialized() and "WORLD_SIZE" not in os.environ:
            raise ConfigError(f"parallel.pp = {P} runs under torchrun: torchrun --standalone "
                              f"--nproc-per-node {P} -m attnres.cli train --pp {P} ...")
        self.world = init_distributed(backend, device.type if device is not None else None)
        if self.world.size != P:
            raise ConfigError(f"parallel.pp = {P} needs {P} processes, this world has "
                              f"{self.world.size}; launch with torchrun --nproc-per-node {P}")
        self.runner: PipelineRunner | None = None
        self._full_layout: Layout | None = None
        self._full_groups: list[str] = []

    # --- what the trainer shares with distributed.Parallel ------------------------------------

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0

    @property
    def data_world(self) -> World:
        """Every rank loads the whole batch."""
        return World()

    def device(self, device: torch.device) -> torch.device:
        return local_device(device)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Build the runner (this rank's chunks of `model`); returns `model` itself."""
        from attnres.config import ConfigError
        try:
            self.runner = PipelineRunner(model, self.P, self.V, cache=self.cache,
                                         n_microbatches=self.M)
        except ValueError as err:
            raise ConfigError(f"parallel.pp: {err}") from None
        return model

    def trainable(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """What the optimizer is built over: this rank's stage parameters."""
        return self.runner.named_parameters()

    def shard_muon(self, optimizer, muon_dist: str):
        return optimizer

    @property
    def sum_(self):
        return _all_reduce_sum

    @property
    def max_(self):
        return _all_reduce_max

    def mean(self, value: float) -> float:
        return value                   # the runner's loss is already the batch's, on every rank

    def barrier(self) -> None:
        dist.barrier()

    def loadable(self, model: nn.Module) -> nn.Module:
        return model                   # every rank holds the whole model

    def after_optimizer_load(self, optimizer) -> None:
        pass

    def full_weights(self, modules):
        return contextlib.nullcontext()

    # --- checkpoints --------------------------------------------------------------------------

    def set_full_layout(self, full_optimizer, model: nn.Module) -> None:
        """Record the layout of the optimizer one process builds over the whole `model`."""
        self._full_layout = _layout(full_optimizer, model)
        self._full_groups = [g["name"] for g in full_optimizer.param_groups]

    def snapshot(self, model: nn.Module, optimizer, scheduler) -> tuple[Any, Any, Any]:
        """Collective. On rank 0: the whole model (its stage parameters refreshed from every
        rank) and the merged optimizer and scheduler states in the single-process layout;
        on the other ranks: (model, None, None)."""
        own = {n: p.detach().cpu() for n, p in self.runner.named_parameters()}
        local = (own, _named_optimizer(optimizer.state_dict(), _layout(optimizer, model)),
                 _named_scheduler(scheduler.state_dict(), [g["name"] for g in optimizer.param_groups]))
        parts = [None] * self.P if self.is_main else None
        dist.gather_object(_to_cpu(local), parts, dst=0)
        if not self.is_main:
            return model, None, None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for weights, _, _ in parts:
                for name, value in weights.items():
                    params[name].copy_(value)
        named_opt = _merge_optimizers([p[1] for p in parts])
        named_sched = _merge_schedulers([p[2] for p in parts])
        return (model, StateSnapshot(_optimizer_state(named_opt, self._full_layout)),
                StateSnapshot(_scheduler_state(named_sched, self._full_groups)))

    def local_optimizer_state(self, full: dict, optimizer, model: nn.Module) -> dict:
        """This rank's part of a single-process optimizer state dict."""
        return _optimizer_state(_named_optimizer(full, self._full_layout),
                                _layout(optimizer, model))

    def local_scheduler_state(self, full: dict, optimizer) -> dict:
        named = _named_scheduler(full, self._full_groups)
        return _scheduler_state(named, [g["name"] for g in optimizer.param_groups])


# --- state dicts by name ---------------------------------------------------------------------

def _layout(optimizer, model: nn.Module) -> Layout:
    """A `HybridOptimizer`'s inner optimizers, their groups and the groups' parameter names."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {inner: [(g["name"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups]
            for inner, opt in optimizer.optimizers.items()}


def _named_optimizer(state: dict, layout: Layout) -> dict:
    """`HybridOptimizer.state_dict()` keyed by parameter and group names instead of indices."""
    out = {}
    for inner, groups in layout.items():
        saved = state["optimizers"][inner]
        if len(saved["param_groups"]) != len(groups):
            raise ValueError(f"optimizer state of {inner!r} has {len(saved['param_groups'])} "
                             f"groups, expected {len(groups)}")
        order = [n for _, names in groups for n in names]
        hyper = {}
        for (gname, names), g in zip(groups, saved["param_groups"]):
            if g.get("param_names", names) != names or len(g["params"]) != len(names):
                raise ValueError(f"optimizer state group {gname!r} holds other parameters")
            hyper[gname] = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        out[inner] = {"state": {order[i]: st for i, st in saved["state"].items()},
                      "groups": hyper,
                      "param_names": any("param_names" in g for g in saved["param_groups"])}
    return {"optimizers": out, "momentum_form": dict(state.get("momentum_form", {}))}


def _optimizer_state(named: dict, layout: Layout) -> dict:
    """The inverse of `_named_optimizer` for the optimizer of `layout` (its parameters' entries)."""
    out = {}
    for inner, groups in layout.items():
        src = named["optimizers"][inner]
        state, param_groups, index = {}, [], 0
        for gname, names in groups:
            ids = list(range(index, index + len(names)))
            group = dict(src["groups"][gname])
            if src["param_names"]:
                group["param_names"] = list(names)
            group["params"] = ids
            param_groups.append(group)
            state.update({i: src["state"][n] for i, n in zip(ids, names) if n in src["state"]})
            index += len(names)
        out[inner] = {"state": state, "param_groups": param_groups}
    form = {k: v for k, v in named["momentum_form"].items() if k in layout}
    return {"optimizers": out, "momentum_form": form}


def _merge_optimizers(parts: list[dict]) -> dict:
    merged: dict[str, dict] = {}
    for part in parts:
        for inner, src in part["optimizers"].items():
            dst = merged.setdefault(inner, {"state": {}, "groups": {},
                                            "param_names": src["param_names"]})
            dst["state"].update(src["state"])
            dst["groups"].update(src["groups"])
    form = {k: v for part in parts for k, v in part["momentum_form"].items()}
    return {"optimizers": merged, "momentum_form": form}


def _named_scheduler(state: dict, groups: list[str]) -> dict:
    return {k: dict(zip(groups, v, strict=True)) if k in _PER_GROUP else v
            for k, v in state.items()}


def _scheduler_state(named: dict, groups: list[str]) -> dict:
    return {k: [v[g] for g in groups] if k in _PER_GROUP else v for k, v in named.items()}


def _merge_schedulers(parts: list[dict]) -> dict:
    merged = dict(parts[0])
    for key in _PER_GROUP:
        if key in merged:
            merged[key] = {g: v for part in parts for g, v in part[key].items()}
    return merged


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _all_reduce_sum(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)


def _all_reduce_max(t: torch.Tensor) -> None:
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
