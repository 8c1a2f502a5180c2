"""Kimi Delta Attention, step by step: the definition (docs/BACKBONE.md#kda-recurrence).

Per head, with a state S of layout [K, V]:

    S~_t = Diag(exp(g_t)) · S_{t-1}                    # decay each key-channel row
    S_t  = S~_t + beta_t · k_t · (v_t - S~_tᵀ k_t)ᵀ     # delta-rule write on the decayed state
    o_t  = S_tᵀ q_t                                     # read after the write

One token at a time, in fp32 (fp64 when an input is fp64). `chunk.py` computes the same thing
chunk by chunk; the tests hold the two together.
"""

import torch
from torch import Tensor


def accum_dtype(*tensors: Tensor | None) -> torch.dtype:
    """fp64 if any given tensor is fp64, else fp32: the dtype KDA state and sums are kept in."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_kda_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                     initial_state: Tensor | None) -> None:
    """Raise a one-line ValueError unless the shapes follow the [B, T, H, K] layout."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if g.shape != q.shape:
        raise ValueError(f"g must match q {tuple(q.shape)}, got {tuple(g.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    expect = (B, H, K, v.shape[-1])
    if initial_state is not None and tuple(initial_state.shape) != expect:
        raise ValueError(f"initial_state must be [B, H, K, V] = {expect}, "
                         f"got {tuple(initial_state.shape)}")


def _step(S: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor):
    """One recurrence step on [B, H, ...] tensors already in the accumulation dtype."""
    S = S * g.exp()[..., None]                                  # [B, H, K, V], decay rows
    kS = torch.einsum("bhk,bhkv->bhv", k, S)                    # S~ᵀ k
    S = S + (beta[..., None] * k)[..., None] * (v - kS)[..., None, :]
    o = torch.einsum("bhk,bhkv->bhv", q, S)                     # read after the write
    return o, S


def kda_decode_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, g_t: Tensor, beta_t: Tensor,
                    state: Tensor | None, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """One KDA token: decay, delta-rule write, read.

    Args:
        q_t, k_t: [B, H, K], L2-normalised; q is multiplied by `scale` here.
        v_t: [B, H, V].
        g_t: [B, H, K], log-space per-channel decay (≤ 0).
        beta_t: [B, H], write strength in (0, 1).
        state: [B, H, K, V] state before this token, or None for zeros.
        scale: query scale; defaults to K ** -0.5.

    Returns:
        o_t: [B, H, V] in v_t's dtype.
        new_state: [B, H, K, V] in fp32 (fp64 for fp64 inputs).
    """
    if q_t.dim() != 3:
        raise ValueError(f"q_t must be [B, H, K], got shape {tuple(q_t.shape)}")
    if state is not None and state.dim() != 4:
        raise ValueError(f"state must be [B, H, K, V], got shape {tuple(state.shape)}")
    check_kda_inputs(q_t[:, None], k_t[:, None], v_t[:, None], g_t[:, None], beta_t[:, None],
                     state)
    B, H, K = q_t.shape
    acc = accum_dtype(q_t, k_t, v_t, g_t, beta_t, state)
    scale = K ** -0.5 if scale is None else scale
    if state is None:
        state = q_t.new_zeros(B, H, K, v_t.shape[-1], dtype=acc)
    o, S = _step(state.to(acc), q_t.to(acc) * scale, k_t.to(acc), v_t.to(acc), g_t.to(acc),
                 beta_t.to(acc))
    return o.to(v_t.dtype), S


def recurrent_kda(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                  scale: float | None = None, initial_state: Tensor | None = None,
                  output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """KDA by its recurrence, one token at a time (the reference for `chunk_kda`).

    Args:
        q, k: [B, T, H, K], L2-normalised; q is multiplied by `scale` here.
        v: [B, T, H, V].
        g: [B, T, H, K], log-space per-channel decay (≤ 0); the decay factor is exp(g).
        beta: [B, T, H], write strength in (0, 1).
        scale: query scale; defaults to K ** -0.5.
        initial_state: [B, H, K, V] state before the first token, or None for zeros.
        output_final_state: also return the state after the last token.

    Returns:
        o: [B, T, H, V] in v's dtype.
        final_state: [B, H, K, V] in fp32 (fp64 for fp64 inputs), or None.
    """
    check_kda_inputs(q, k, v, g, beta, initial_state)
    B, T, H, K = q.shape
    acc = accum_dtype(q, k, v, g, beta, initial_state)
    scale = K ** -0.5 if scale is None else scale
    out_dtype = v.dtype
    q, k, v, g, beta = (x.to(acc) for x in (q, k, v, g, beta))
    q = q * scale
    if initial_state is None:
        S = q.new_zeros(B, H, K, v.shape[-1])
    else:
        S = initial_state.to(acc)
    outs = []
    for t in range(T):
        o, S = _step(S, q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t])
        outs.append(o)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)   # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
