"""Parameter routing by tag (docs/OPTIM.md#parameter-routing) and the Muon + AdamW optimizer behind
one interface.

Every trainable parameter carries one `attnres.tags` group, set where it is created:
`muon` (2-D hidden matrices, 3-D expert stacks), `adamw` (embeddings, head, norm gains, conv
filters; decay λ), `adamw_no_decay` (KDA `A_log` / `dt_bias`, DenseFormer / mHC mixing; decay 0)
and `attnres` (the AttnRes read parameters; decay 0, LR × `read_lr_mult`).
"""

from __future__ import annotations

import torch
from torch import nn

from attnres import tags

from .muon import Muon, build_muon, closure_loss

Named = list[tuple[str, nn.Parameter]]

OPTIMIZERS = ("muon", "adamw")
# the stored momentum buffers differ by the factor 1 − μ (docs/OPTIM.md#momentum-forms)
MOMENTUM_FORM = {"muon": "heavy_ball", "muon_torch": "ema"}


def route_parameters(model: nn.Module | Named) -> dict[str, Named]:
    """Split the trainable parameters of `model` by their optimizer-group tag.

    `model` may also be a list of (name, parameter) pairs, e.g. one pipeline stage's
    (`PipelineRunner.named_parameters()`).

    Returns {tags.MUON: [...], tags.ADAMW: [...], tags.ADAMW_NO_DECAY: [...], tags.ATTNRES: [...]},
    each a list of
    (name, parameter) in `named_parameters` order (shared parameters once, under their first name).
    Parameters with requires_grad=False are skipped.

    Raises:
        ValueError: a trainable parameter has no tag (or an unknown one), naming it.
    """
    routes: dict[str, Named] = {g: [] for g in tags.GROUPS}
    named_params = model.named_parameters() if isinstance(model, nn.Module) else model
    for name, p in named_params:
        if not p.requires_grad:
            continue
        group = tags.get_group(p)
        if group is None:
            raise ValueError(
                f"parameter {name!r} {tuple(p.shape)} has no optimizer-group tag; "
                f"tag it where it is created with attnres.tags.set_group(p, group)"
            )
        if group not in routes:
            raise ValueError(
                f"parameter {name!r} has unknown optimizer-group tag {group!r}; expected one of {tags.GROUPS}"
            )
        routes[group].append((name, p))
    seen: set[int] = set()
    for group, named in routes.items():
        for name, p in named:
            if id(p) in seen:
                raise ValueError(f"parameter {name!r} is routed to more than one optimizer group")
            seen.add(id(p))
    return routes


class HybridOptimizer(torch.optim.Optimizer):
    """Muon and AdamW stepped together behind the `torch.optim.Optimizer` interface.

    `param_groups` is the list of every inner optimizer's group dicts (the same objects), so an
    LR scheduler such as `LambdaLR` drives one multiplier for all of them; each group has a
    "name" ("muon", "muon_torch", "adamw_matrices", "adamw", "adamw_no_decay", "attnres"). The state lives
    in the inner optimizers (`optimizers`, by name); `state_dict` nests theirs, and a state dict
    loads only into a HybridOptimizer with the same inner optimizers (same optimizer choice and
    Muon impl).

    Args:
        optimizers: name → inner optimizer, in step order (Muon first, AdamW last).
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("HybridOptimizer needs at least one inner optimizer")
        self.optimizers = dict(optimizers)
        params = [p for g in self._inner_groups() for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = self._inner_groups()

    def __getstate__(self):
        return {**super().__getstate__(), "optimizers": self.optimizers}

    def _inner_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @property
    def muon(self) -> torch.optim.Optimizer | None:
        return self.optimizers.get("muon", self.optimizers.get("muon_torch"))

    @property
    def adamw(self) -> torch.optim.Optimizer | None:
        return self.optimizers.get("adamw")

    @property
    def last_update_rms(self) -> dict[str | int, float]:
        """Muon's √mean(u²) per unit from the last step (empty for torch.optim.Muon units)."""
        opt = self.optimizers.get("muon")
        return opt.last_update_rms if isinstance(opt, Muon) else {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "optimizers") and self.param_groups:
            raise NotImplementedError("add parameter groups to an inner optimizer (optimizers[name])")
        super().add_param_group(param_group)

    def state_dict(self) -> dict:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "momentum_form": {n: f for n, f in MOMENTUM_FORM.items() if n in self.optimizers},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["optimizers"]
        if list(saved) != list(self.optimizers):
            raise ValueError(
                f"optimizer state has inner optimizers {list(saved)}, this one has "
                f"{list(self.optimizers)} (was the optimizer or the Muon impl changed?)"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])
        self.param_groups = self._inner_groups()  # load_state_dict replaces the group dicts

    def group_sizes(self) -> dict[str, tuple[int, int]]:
        """Group name → (number of tensors, number of elements), for the startup log."""
        return {g["name"]: (len(g["params"]), sum(p.numel() for p in g["params"]))
                for g in self.param_groups}


def build_optimizer(
    model: nn.Module | Named,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    muon_impl: str = "ours",
    ns_dtype: torch.dtype | None = None,
    optimizer: str = "muon",
    read_lr_mult: float = 0.1,
) -> HybridOptimizer:
    """Route `model`'s parameters (or the given (name, parameter) pairs) by tag and build
    Muon + AdamW (docs/OPTIM.md#parameter-routing, docs/OPTIM.md#muon-update, docs/OPTIM.md#adamw).

    optimizer="muon": `muon` units go to Muon (decay λ); `adamw` to AdamW with decay λ;
    `adamw_no_decay` to AdamW with decay 0. With muon_impl="torch" the 2-D units go to
    `torch.optim.Muon` ("muon_torch") and 3-D expert stacks stay on ours
    (docs/OPTIM.md#momentum-forms).
    optimizer="adamw" (the baseline optimizer): the `muon` units go to AdamW with decay λ, in
    their own group "adamw_matrices". `attnres` parameters (the AttnRes reads) go to AdamW with
    decay 0 at LR `lr * read_lr_mult`, the one group whose LR differs
    (docs/DESIGN.md#the-read-parameters-learning-rate-residuallr_mult); the schedule scales every
    group's LR by the same multiplier. Empty groups are left out (a model without hidden matrices
    has no Muon).
    """
    if not read_lr_mult > 0:
        raise ValueError(f"read_lr_mult must be > 0, got {read_lr_mult}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    routes = route_parameters(model)
    matrices = routes[tags.MUON]
    inner: dict[str, torch.optim.Optimizer] = {}
    adamw_groups = []
    if optimizer == "adamw":
        adamw_groups.append({"params": matrices, "weight_decay": weight_decay, "name": "adamw_matrices"})
    else:
        muon_kw = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                       ns_steps=ns_steps)
        if muon_impl == "torch":
            flat = [(n, p) for n, p in matrices if p.dim() == 2]
            matrices = [(n, p) for n, p in matrices if p.dim() != 2]  # experts: always ours
            if flat:
                inner["muon_torch"] = build_muon([{"params": flat, "name": "muon_torch"}], "torch", **muon_kw)
        elif muon_impl != "ours":
            raise ValueError(f"unknown Muon impl {muon_impl!r}; expected 'ours' or 'torch'")
        if matrices:
            inner["muon"] = build_muon([{"params": matrices, "name": "muon"}], "ours",
                                       ns_dtype=ns_dtype, **muon_kw)
    adamw_groups += [
        {"params": routes[tags.ADAMW], "weight_decay": weight_decay, "name": "adamw"},
        {"params": routes[tags.ADAMW_NO_DECAY], "weight_decay": 0.0, "name": "adamw_no_decay"},
        {"params": routes[tags.ATTNRES], "weight_decay": 0.0, "name": "attnres",
         "lr": lr * read_lr_mult},
    ]
    adamw_groups = [g for g in adamw_groups if g["params"]]
    if adamw_groups:
        inner["adamw"] = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps,
                                           weight_decay=weight_decay)
    if not inner:
        raise ValueError("the model has no trainable parameters")
    return HybridOptimizer(inner)
