"""Checkpoints of dp / fsdp runs, gathered and restored by `torch.distributed.checkpoint`.

`DistributedCheckpointer` is the trainer's `Checkpointer` (attnres.train.checkpoint) for DDP and
FSDP2. Both directions go through `torch.distributed.checkpoint.state_dict`, so that the
library, not this project, knows how a DDP or FSDP2 (DTensor) model and its optimizer state are
laid out:

- Saving: `get_model_state_dict` / `get_optimizer_state_dict` with
  `StateDictOptions(full_state_dict=True, cpu_offload=True)` give rank 0 full, unsharded CPU
  tensors (every rank takes part in the all-gathers; the others get empty dicts). The optimizer
  state comes keyed by parameter name (FQN); it is re-keyed by index into the single-process
  `HybridOptimizer.state_dict()` layout, which `attnres.train.checkpoint` writes as data only
  (safetensors + JSON, no pickle).
- Resuming: every rank reads the checkpoint; its index-keyed optimizer state is re-keyed by name
  and `set_model_state_dict` / `set_optimizer_state_dict` (`full_state_dict=True`) copy each
  rank's part (its shard under FSDP2) out of the full tensors.

The library works on one `torch.optim.Optimizer` at a time, so the `HybridOptimizer`'s inner
optimizers (Muon, AdamW) are passed one by one. Two of its habits are undone here:
- It fills an optimizer that has no state yet by running one step with zero gradients and
  LR 0 (`_init_optim_state`; pytorch/pytorch#164929). While training that would change the
  trajectory (AdamW's step count), so an optimizer without state on some rank (before its first
  update; a `ShardedMuon` rank that owns nothing) is saved from its own `state_dict()` instead:
  it holds no tensor to gather (`ShardedMuon` gathers its own).
- On load that zero step gives every parameter a state, also those that never get a gradient
  (the first AttnRes read's query, docs/THEORY.md#single-source): after loading, the state of every
  parameter the checkpoint has none for is dropped again, as a single process has none. The
  groups' hyperparameters are then set from the checkpoint as saved (the library's round trip
  turns tuples such as `betas` into lists), so a resumed run saves what an uninterrupted one
  does, bit for bit.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from attnres.optim.routing import MOMENTUM_FORM
from attnres.train.checkpoint import Checkpointer

_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True)
# strict=False: a parameter that never had a gradient has no optimizer state to load; the weight
# names and shapes are checked before (`checkpoint.check_weights`)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


class DistributedCheckpointer(Checkpointer):
    """DDP / FSDP2: full state gathered to rank 0 on save, copied back out on load."""

    def __init__(self, model, optimizer, scheduler, is_main: bool, barrier, device):
        super().__init__(model, optimizer, scheduler, is_main=is_main, barrier=barrier)
        self._device = device
        self._names = {id(p): n for n, p in model.named_parameters()}

    def full_state(self):
        inner = self.optimizer.optimizers
        stepped = self._has_state_everywhere(list(inner.values()))
        weights = get_model_state_dict(self.model, options=_SAVE)
        states = {name: _by_index(get_optimizer_state_dict(self.model, opt, options=_SAVE))
                  if ok else opt.state_dict()
                  for (name, opt), ok in zip(inner.items(), stepped)}
        if not self.is_main:
            return None
        optimizer = {"optimizers": states,
                     "momentum_form": {n: f for n, f in MOMENTUM_FORM.items() if n in inner}}
        return weights, optimizer, self.scheduler.state_dict()

    def restore(self, weights, optimizer, scheduler) -> None:
        inner = self.optimizer.optimizers
        saved = optimizer["optimizers"]
        if list(saved) != list(inner):
            raise ValueError(f"optimizer state has inner optimizers {list(saved)}, this one has "
                             f"{list(inner)} (was the optimizer or the Muon impl changed?)")
        # the library scatters tensor by tensor in the dict's order: the model's on every rank
        # (safetensors' order of the file's keys differs between processes)
        weights = {k: weights[k] for k in self.model.state_dict()}
        set_model_state_dict(self.model, weights, options=_LOAD)
        for name, opt in inner.items():
            by_name = self._by_name(saved[name], opt)
            set_optimizer_state_dict(self.model, opt, by_name, options=_LOAD)
            for p in [p for p in opt.state if self._names[id(p)] not in by_name["state"]]:
                del opt.state[p]             # a state the library's zero step made up
            for group, saved_group in zip(opt.param_groups, saved[name]["param_groups"]):
                # the hyperparameters as saved: the library's round trip makes tuples lists
                group.update({k: v for k, v in saved_group.items() if k != "params"})
        # the inner optimizers replaced their group dicts: the scheduler drives the new ones
        self.optimizer.param_groups = [g for opt in inner.values() for g in opt.param_groups]
        self.scheduler.load_state_dict(scheduler)

    def _has_state_everywhere(self, optimizers) -> list[bool]:
        """Per optimizer: whether it holds state on every rank (one all-reduce)."""
        flags = torch.tensor([float(bool(opt.state)) for opt in optimizers], device=self._device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        return [bool(f) for f in flags.tolist()]

    def _by_name(self, state: dict, opt) -> dict:
        """A single-process (index-keyed) state dict of `opt`, keyed by parameter names."""
        order = [self._names[id(p)] for g in opt.param_groups for p in g["params"]]
        groups = state["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
            raise ValueError(f"optimizer state groups hold {[len(g['params']) for g in groups]} "
                             f"parameters, this optimizer's {[len(g['params']) for g in opt.param_groups]}")
        return {"state": {order[i]: st for i, st in state["state"].items()},
                "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in groups]}


def _by_index(state: dict) -> dict:
    """The library's name-keyed optimizer state dict in `Optimizer.state_dict()`'s layout:
    parameters numbered through the groups in order (empty on ranks other than 0)."""
    if not state:
        return state
    order = [n for g in state["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    return {"state": {index[n]: st for n, st in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                             for g in state["param_groups"]]}
