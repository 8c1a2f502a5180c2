"""Owner-compute Muon for data parallelism (docs/OPTIM.md#distributed-muon, mode `sharded`).

After the gradient all-reduce every rank holds the same gradients. Instead of every rank running
Newton–Schulz on every unit (`replicated`), each unit gets one owner; the owner alone keeps its
momentum, orthogonalises and updates it, then the ranks exchange the updated parameters with one
all-gather of per-owner flat buffers. The arithmetic per unit is exactly `Muon`'s, so the result
equals single-process Muon on the same gradients.

Owners: units sorted by descending numel (stable, so ties keep parameter order) go one by one to
the least-loaded rank (lowest rank on ties): deterministic and identical on every rank. A 3-D
expert stack is one unit.

The state dict is the single-process one (full heavy-ball momentum for every unit, gathered from
the owners); loading keeps the owned units' momentum only. Under FSDP2 the parameters are DTensor
shards and `Muon` itself gathers each matrix for Newton–Schulz (see `attnres.optim.muon`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attnres.optim.muon import Muon, closure_loss


def assign_owners(numels: list[int], world_size: int) -> list[int]:
    """Owner rank of each unit: greedy by descending numel onto the least-loaded rank."""
    load = [0] * world_size
    owners = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: -numels[i]):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += numels[i]
    return owners


class ShardedMuon(Muon):
    """`Muon` where each rank steps only the units it owns, then all ranks exchange parameters.

    Args: as `Muon`, plus rank and world_size of the data-parallel group.
    `last_update_rms` holds this rank's units only.
    """

    def __init__(self, params, *, rank: int, world_size: int, **kwargs):
        super().__init__(params, **kwargs)
        self.rank, self.world_size = rank, world_size
        self.units = [p for g in self.param_groups for p in g["params"]]
        dtypes = {p.dtype for p in self.units}
        if len(dtypes) > 1:
            raise ValueError(f"sharded Muon packs units of one dtype, got {sorted(map(str, dtypes))}")
        self.owners = assign_owners([p.numel() for p in self.units], world_size)
        self._sizes = [sum(p.numel() for p, o in zip(self.units, self.owners) if o == r)
                       for r in range(world_size)]

    def _owned(self, rank: int) -> list[torch.Tensor]:
        return [p for p, o in zip(self.units, self.owners) if o == rank]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        hidden = {}
        for p, o in zip(self.units, self.owners):
            if o != self.rank and p.grad is not None:  # Muon skips a unit without a gradient
                hidden[p], p.grad = p.grad, None
        try:
            super().step()
        finally:
            for p, g in hidden.items():
                p.grad = g
        self._exchange()
        return loss

    def _exchange(self) -> None:
        """Every rank's owned units, packed flat and padded to the largest, all-gathered."""
        if not self.units:
            return
        width = max(self._sizes)
        ref = self.units[0]
        mine = torch.zeros(width, dtype=ref.dtype, device=ref.device)
        owned = self._owned(self.rank)
        if owned:
            flat = torch.cat([p.detach().reshape(-1) for p in owned])
            mine[:flat.numel()] = flat
        bufs = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(bufs, mine)
        for r, buf in enumerate(bufs):
            if r == self.rank:
                continue
            at = 0
            for p in self._owned(r):
                p.copy_(buf[at:at + p.numel()].view_as(p))
                at += p.numel()

    def state_dict(self) -> dict:
        """Collective: the single-process state dict, each unit's momentum from its owner."""
        state = super().state_dict()  # "state" is keyed by the unit's index in `self.units`
        full = {}
        for i, (p, o) in enumerate(zip(self.units, self.owners)):
            buf = self.state.get(p, {}).get("momentum_buffer")
            flag = torch.tensor([0 if buf is None else 1], device=p.device)
            dist.broadcast(flag, src=o)
            if not int(flag):
                continue
            if buf is None:
                buf = torch.empty(p.shape, dtype=torch.promote_types(torch.float32, p.dtype),
                                  device=p.device)
            dist.broadcast(buf, src=o)
            full[i] = {"momentum_buffer": buf}
        state["state"] = full
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p, o in zip(self.units, self.owners):
            if o != self.rank:
                self.state.pop(p, None)


def shard_muon(optimizer, rank: int, world_size: int):
    """Replace the `muon` optimizer inside a `HybridOptimizer` by a `ShardedMuon` over the same
    units and settings. Call before building the LR scheduler."""
    muon = getattr(optimizer, "optimizers", {}).get("muon")
    if muon is None:
        return optimizer
    groups = []
    for g in muon.param_groups:
        group = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        names = g.get("param_names")
        group["params"] = list(zip(names, g["params"])) if names is not None else list(g["params"])
        groups.append(group)
    optimizer.optimizers["muon"] = ShardedMuon(groups, rank=rank, world_size=world_size,
                                               **muon.defaults)
    optimizer.param_groups = optimizer._inner_groups()
    return optimizer
