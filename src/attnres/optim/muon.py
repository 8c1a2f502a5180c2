"""Muon (docs/OPTIM.md#muon-update to docs/OPTIM.md#momentum-forms): momentum, Newton–Schulz
orthogonalisation, Moonlight RMS scale.

`Muon` is the canonical implementation: heavy-ball momentum stored as is, Nesterov by default,
NS in a configurable dtype, 2-D units and 3-D expert stacks [E, out, in] orthogonalised per
expert. `build_muon(..., impl="torch")` wraps `torch.optim.Muon` (2-D units only) instead.
Under FSDP2 a unit is a DTensor shard: momentum stays sharded and Newton–Schulz runs on the
gathered full matrix (docs/OPTIM.md#distributed-muon), each rank keeping its slice of the update.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic (a, b, c) of [ML]; docs/OPTIM.md#muon-update
NS_STEPS = 5
NORM_EPS = 1e-7
RMS_FACTOR = 0.2  # Moonlight: u = 0.2 * sqrt(max(m, n)) * O matches AdamW's update RMS
IMPLS = ("ours", "torch")


def closure_loss(closure):
    """The loss of an optimizer's `step(closure)`: the closure re-evaluated with gradients on
    (step itself runs under no_grad), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def zeropower_newton_schulz(
    X: Tensor,
    steps: int = NS_STEPS,
    coeffs: tuple[float, float, float] = NS_COEFFS,
    dtype: torch.dtype = torch.float32,
    eps: float = NORM_EPS,
) -> Tensor:
    """Approximate U·Vᵀ of X = U·Σ·Vᵀ by `steps` quintic Newton–Schulz iterations
    (docs/OPTIM.md#newton-schulz-iteration).

    X is normalised by max(‖X‖_F, eps) in C = promote_types(fp32, X.dtype), transposed when
    m > n (so the Gram matrix X·Xᵀ is the smaller one), cast to `dtype` for the iterations and
    cast back to C. Each iteration maps the singular values by f(x) = a·x + b·x³ + c·x⁵.

    Args:
        X: [..., m, n]; leading dims (e.g. experts E) are independent matrices, each normalised
            and orthogonalised on its own.
        steps: number of iterations (5 in [ML]).
        coeffs: (a, b, c).
        dtype: dtype of the iterations (bf16 on CUDA, fp32 on CPU by project default).
        eps: floor of the Frobenius norm.

    Returns:
        O: [..., m, n] in C.
    """
    if X.dim() < 2:
        raise ValueError(f"Newton-Schulz needs a [..., m, n] tensor, got {tuple(X.shape)}")
    a, b, c = coeffs
    work = torch.promote_types(torch.float32, X.dtype)
    X = X.to(work)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    shape = X.shape
    X = X.to(dtype).reshape(-1, *shape[-2:])          # [batch, k, l], k = min(m, n)
    for _ in range(steps):
        A = X @ X.mT                                  # [batch, k, k]
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)   # b·A + c·A·A
        X = torch.baddbmm(X, B, X, beta=a)            # a·X + B·X
    X = X.reshape(shape).to(work)
    return X.mT if tall else X


def rms_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """0.2 · sqrt(max(m, n)) of the logical 2-D unit: the last two dims (per expert for 3-D)."""
    return RMS_FACTOR * math.sqrt(max(shape[-2], shape[-1]))


def default_ns_dtype(p: Tensor) -> torch.dtype:
    """bf16 for CUDA parameters ([ML]: NS "only requires bf16"), fp32 elsewhere
    (docs/OPTIM.md#newton-schulz-iteration)."""
    return torch.bfloat16 if p.is_cuda else torch.float32


def is_sharded(t: Tensor) -> bool:
    """A DTensor shard (FSDP2 parameters, gradients and momenta)."""
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def orthogonalise_sharded(n: Tensor, steps: int, coeffs: tuple[float, float, float],
                          dtype: torch.dtype, eps: float) -> tuple[Tensor, Tensor]:
    """NS of a DTensor unit (docs/OPTIM.md#distributed-muon: NS must see the full logical matrix;
    3-D: each expert's): gather the full matrix (an all-gather), orthogonalise it on every rank (the
    same result), keep this rank's shard. Returns (O as a DTensor like `n`, the full O)."""
    from torch.distributed.tensor import distribute_tensor
    o_full = zeropower_newton_schulz(n.full_tensor(), steps, coeffs, dtype, eps)
    return distribute_tensor(o_full, n.device_mesh, n.placements, src_data_rank=None), o_full


def _named(params) -> list[tuple[str, Tensor]]:
    """(label, tensor) for every parameter in `params` (tensors, (name, tensor) pairs or groups)."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out, i = [], 0
    for g in groups:
        for item in g["params"]:
            out.append(item if isinstance(item, tuple) else (f"#{i}", item))
            i += 1
    return out


class Muon(torch.optim.Optimizer):
    """Muon with heavy-ball momentum and the Moonlight RMS scale (docs/OPTIM.md#muon-update,
    docs/OPTIM.md#3-d-expert-weights).

    Per unit W ([m, n], or [E, m, n] batched per expert) with gradient G:

        M ← μ·M + G;  N ← G + μ·M (Nesterov) or M;  O ← NS(N)
        W ← W·(1 − η·λ) − η·0.2·sqrt(max(m, n))·O

    The buffer M ("momentum_buffer") has the parameter's shape and is kept in
    C = promote_types(fp32, param dtype); all arithmetic except NS runs in C. The decay uses the
    unadjusted η. `last_update_rms` maps each stepped parameter (its name when the optimizer was
    given (name, tensor) pairs, else its running index) to √mean(u²) of u = 0.2·sqrt(max(m, n))·O;
    the values are kept as 0-d tensors and turned into floats only when read.

    Args:
        params: 2-D or 3-D tensors, (name, tensor) pairs or param groups.
        lr: η.
        weight_decay: λ (decoupled).
        momentum: μ.
        nesterov: use N = G + μ·M.
        ns_steps, ns_coefficients: Newton–Schulz iterations and (a, b, c).
        eps: Frobenius-norm floor.
        ns_dtype: dtype of the NS iterations; None = bf16 for CUDA params, fp32 otherwise.
        track_update_rms: record `last_update_rms` (one reduction per unit).
    """

    def __init__(
        self,
        params,
        lr: float = 2e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = NS_STEPS,
        ns_coefficients: tuple[float, float, float] = NS_COEFFS,
        eps: float = NORM_EPS,
        ns_dtype: torch.dtype | None = None,
        track_update_rms: bool = True,
    ):
        if lr < 0.0:
            raise ValueError(f"Muon lr must be >= 0, got {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if ns_steps < 0:
            raise ValueError(f"Muon ns_steps must be >= 0, got {ns_steps}")
        params = list(params)
        for name, p in _named(params):
            if p.dim() not in (2, 3) or p.is_complex():
                raise ValueError(
                    f"Muon takes real 2-D [out, in] or 3-D [E, out, in] parameters; "
                    f"{name} is {tuple(p.shape)} {p.dtype}"
                )
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), eps=eps,
                        ns_dtype=ns_dtype, track_update_rms=track_update_rms)
        super().__init__(params, defaults)
        self._update_rms: dict[str | int, Tensor] = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._update_rms = {}

    @property
    def last_update_rms(self) -> dict[str | int, float]:
        """√mean(u²) per unit from the last step (syncs with the device once, when read)."""
        return {k: float(v) for k, v in self._update_rms.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        self._update_rms = {}
        index = 0
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                key = names[i] if names is not None else index + i
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                work = torch.promote_types(torch.float32, p.dtype)
                g = p.grad.to(work)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, dtype=work)
                m = state["momentum_buffer"]
                m.mul_(mu).add_(g)                             # heavy-ball sum
                n = g.add(m, alpha=mu) if group["nesterov"] else m
                ns_dtype = group["ns_dtype"] if group["ns_dtype"] is not None else default_ns_dtype(p)
                ns_args = (group["ns_steps"], group["ns_coefficients"], ns_dtype, group["eps"])
                if is_sharded(n):                              # FSDP2 shard: NS on the full matrix
                    o, o_full = orthogonalise_sharded(n, *ns_args)
                else:
                    o = o_full = zeropower_newton_schulz(n, *ns_args)
                scale = rms_scale(p.shape)                     # per-expert (out, in) for 3-D
                if group["track_update_rms"]:
                    self._update_rms[key] = o_full.square().mean().sqrt().mul_(scale)
                if p.dtype == work:
                    p.mul_(1.0 - lr * wd).add_(o, alpha=-lr * scale)
                else:
                    p.copy_((p.to(work) * (1.0 - lr * wd)).add_(o, alpha=-lr * scale))
            index += len(group["params"])
        return loss


def torch_muon_available() -> bool:
    """True when this torch ships `torch.optim.Muon` (PyTorch >= 2.9)."""
    return hasattr(torch.optim, "Muon")


def build_muon(
    params,
    impl: str = "ours",
    *,
    lr: float,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = NS_STEPS,
    ns_dtype: torch.dtype | None = None,
) -> torch.optim.Optimizer:
    """A Muon optimizer: ours (`impl="ours"`) or `torch.optim.Muon` (`impl="torch"`,
    docs/OPTIM.md#momentum-forms).

    The torch implementation takes 2-D parameters only, runs NS in bf16 and stores EMA momentum
    buffers (ours store heavy-ball sums: they differ by the factor 1 − μ,
    docs/OPTIM.md#momentum-forms). It is built with adjust_lr_fn="match_rms_adamw" so that both
    apply the 0.2·sqrt(max(m, n)) scale.
    """
    if impl == "ours":
        return Muon(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                    nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype)
    if impl != "torch":
        raise ValueError(f"unknown Muon impl {impl!r}; expected one of {IMPLS}")
    if not torch_muon_available():
        raise RuntimeError(f"impl='torch' needs torch.optim.Muon (torch >= 2.9), this is {torch.__version__}")
    if ns_dtype not in (None, torch.bfloat16):
        raise ValueError(f"torch.optim.Muon runs Newton-Schulz in bfloat16 only, got ns_dtype={ns_dtype}")
    params = list(params)
    for name, p in _named(params):
        if p.dim() != 2:
            raise ValueError(
                f"torch.optim.Muon takes 2-D parameters only; {name} is {tuple(p.shape)} "
                f"(use impl='ours', which runs 3-D experts per expert)"
            )
    return torch.optim.Muon(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                            nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")
