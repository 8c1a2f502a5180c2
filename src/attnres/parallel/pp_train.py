"""Pipeline parallelism behind the trainer's `Parallel` interface (`parallel.pp > 1`,
docs/DISTRIBUTED.md).

`PipelineParallel` is what `attnres.parallel.parallelize` returns for pp > 1: it joins
torchrun's process group (world size = P), keeps this rank's stages of the model in a
`PipelineRunner`, reduces the QK-Clip and MoE statistics over the pipeline ranks, and its
`PipelineCheckpointer` turns checkpoints to and from the single-process layout.

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

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from attnres.train.checkpoint import Checkpointer

from .distributed import World, init_distributed, local_device
from .modes import Distributed
from .pipeline import PipelineRunner

# scheduler state entries with one value per optimizer param group (LambdaLR)
_PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas")

Layout = dict[str, list[tuple[str, list[str]]]]   # inner optimizer -> [(group name, [param names])]


class PipelineParallel(Distributed):
    """Pipeline parallelism for the trainer: P ranks, V virtual stages, M micro-batches
    (`cfg.parallel`: pp, virtual_stages, pp_cache, microbatches). Every rank builds the whole
    model from the same seed and keeps its stages."""

    def _join(self, cfg, device: torch.device) -> torch.device:
        from attnres.config import ConfigError
        par = cfg.parallel
        self.P, self.V, self.cache = par.pp, par.virtual_stages, par.pp_cache
        self.M = par.pp_microbatches(cfg.train.batch_size)
        if not dist.is_initialized() and "WORLD_SIZE" not in os.environ:
            raise ConfigError(f"parallel.pp = {self.P} runs under torchrun: torchrun --standalone "
                              f"--nproc-per-node {self.P} -m attnres.cli train --pp {self.P} ...")
        self.world = init_distributed(par.backend, device.type)
        if self.world.size != self.P:
            raise ConfigError(f"parallel.pp = {self.P} needs {self.P} processes, this world has "
                              f"{self.world.size}; launch with torchrun --nproc-per-node {self.P}")
        return local_device(device)

    def _apply(self, model: nn.Module) -> nn.Module:
        """The runner of this rank's chunks of `model`; `model` itself stays whole."""
        from attnres.config import ConfigError
        try:
            self.runner = PipelineRunner(model, self.P, self.V, cache=self.cache,
                                         n_microbatches=self.M)
        except ValueError as err:
            raise ConfigError(f"parallel.pp: {err}") from None
        self.current = True                     # every rank's model is the whole current one
        self._full_layout: Layout = {}
        self._full_groups: list[str] = []
        return model

    @property
    def data_world(self) -> World:
        """Every rank loads the whole batch."""
        return World()

    def main_model(self) -> nn.Module | None:
        """Rank 0's model is whole and current before training and after a checkpoint gathered
        every stage into it, not after a step (the other stages' weights are then stale)."""
        return self.model if self.is_main and self.current else None

    def check_eval(self, batches) -> None:
        from attnres.config import ConfigError
        if any(len(x) % self.M for x, _ in batches):
            raise ConfigError(f"the validation split gives a batch of {len(batches[-1][0])} "
                              f"windows, not divisible by the {self.M} pipeline "
                              f"micro-batches; use more data or a shorter train.seq_len")

    def build_optimizer(self, make: Callable):
        """The optimizer over this rank's stage parameters; checkpoints use the layout of the
        one a single process builds over the whole model."""
        full = make(self.model)
        self._full_layout = _layout(full, self.model)
        self._full_groups = [g["name"] for g in full.param_groups]
        return make(self.runner.named_parameters())

    def forward_backward(self, x, y, max_norm):
        """Forward and backward of the M micro-batches, then the clip over every stage's
        gradients; the loss and the norm are the whole batch's, the same on every rank (so
        every rank skips a non-finite step together)."""
        with self.autocast():
            value, stats = self.runner.train_step(x, y)
        self.current = False
        return value, self.runner.clip_grad_norm_(max_norm), stats

    @torch.no_grad()
    def eval_loss(self, x, y) -> float:
        with self.autocast():
            return self.runner.eval_loss(x, y)

    def checkpointer(self, optimizer, scheduler) -> Checkpointer:
        return PipelineCheckpointer(self, optimizer, scheduler)


class PipelineCheckpointer(Checkpointer):
    """Gathers the stages' weights and optimizer state to rank 0 in the single-process layout;
    on load, every rank keeps its stages' part."""

    def __init__(self, par: PipelineParallel, optimizer, scheduler):
        super().__init__(par.model, optimizer, scheduler, is_main=par.is_main,
                         barrier=par.barrier)
        self.par = par

    def full_state(self):
        """Collective. On rank 0: the whole model's weights (its stage parameters refreshed from
        every rank) and the merged optimizer and scheduler states; None on the other ranks."""
        par, model, optimizer = self.par, self.model, self.optimizer
        own = {n: p.detach().cpu() for n, p in par.runner.named_parameters()}
        local = (own, _named_optimizer(optimizer.state_dict(), _layout(optimizer, model)),
                 _named_scheduler(self.scheduler.state_dict(),
                                  [g["name"] for g in optimizer.param_groups]))
        parts = [None] * par.P if par.is_main else None
        dist.gather_object(_to_cpu(local), parts, dst=0)
        if not par.is_main:
            return None
        params = dict(model.named_parameters())
        with torch.no_grad():
            for weights, _, _ in parts:
                for name, value in weights.items():
                    params[name].copy_(value)
        par.current = True
        named_opt = _merge_optimizers([p[1] for p in parts])
        named_sched = _merge_schedulers([p[2] for p in parts])
        return (model.state_dict(), _optimizer_state(named_opt, par._full_layout),
                _scheduler_state(named_sched, par._full_groups))

    def restore(self, weights, optimizer, scheduler) -> None:
        """Every rank: the full weights into its whole model; of the optimizer and scheduler
        state, the entries of its own parameters and groups."""
        par = self.par
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(_optimizer_state(
            _named_optimizer(optimizer, par._full_layout), _layout(self.optimizer, self.model)))
        groups = [g["name"] for g in self.optimizer.param_groups]
        self.scheduler.load_state_dict(
            _scheduler_state(_named_scheduler(scheduler, par._full_groups), groups))
        par.current = True


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

