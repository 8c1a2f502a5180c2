"""Kimi Delta Attention, chunk by chunk: the WY / UT algorithm
(docs/BACKBONE.md#kda-chunkwise-form, docs/BACKBONE.md#kda-numerics).

Pure PyTorch, differentiated by autograd. Everything inside a chunk (the decayed key-key and
query-key products, the unit-lower-triangular solve, the WY factors W and U~) is computed for
all batches, heads and chunks at once; only the state is carried chunk after chunk.

Numerics (docs/BACKBONE.md#kda-numerics): decays are cumulative sums of g in log space, restarting
every chunk, and only non-positive numbers are exponentiated. Masked pairs get an exponent of -inf
*before* `exp`, so no inf ever appears, in the forward or the backward, however strong the decay.
Pairwise decays are formed per sub-chunk of `subchunk_size` tokens: exactly inside a diagonal
sub-block, and through the reference point Gamma_a (G just before sub-chunk a) between sub-chunks,
    exp(G_r - G_s) = exp(G_r - Gamma_a) * exp(Gamma_a - G_s),   both factors ≤ 1,
which turns each off-diagonal sub-block into a matmul.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from attnres.ops.kda.naive import accum_dtype, check_kda_inputs


def _masked_exp(exponent: Tensor, keep: Tensor) -> Tensor:
    """exp(exponent) where `keep`, exactly 0 elsewhere (the exponent is masked, not the result)."""
    return torch.where(keep, exponent, float("-inf")).exp()


def _intra_chunk(q: Tensor, k: Tensor, G: Tensor, subchunk: int) -> tuple[Tensor, Tensor]:
    """Decayed query-key and key-key products inside each chunk.

    Args:
        q, k: [..., C, K] (q already scaled); G: [..., C, K] in-chunk cumulative log-decay.
        subchunk: sub-chunk length c, dividing C.

    Returns:
        A_qk: [..., C, C], sum_c q[r,c] k[s,c] exp(G[r,c] - G[s,c]) for s ≤ r, else 0.
        A_kk: [..., C, C], the same with k for q and s < r (β not applied yet).
    """
    C = q.shape[-2]
    n, c = C // subchunk, subchunk
    qs, ks, Gs = (x.unflatten(-2, (n, c)) for x in (q, k, G))      # [..., n, c, K]
    dev = q.device

    # Diagonal sub-blocks: exact pairwise decays, [..., n, c, c, K].
    causal = torch.ones(c, c, dtype=torch.bool, device=dev).tril()  # s ≤ r
    decay = _masked_exp(Gs[..., :, None, :] - Gs[..., None, :, :], causal[:, :, None])
    kdec = decay * ks[..., None, :, :]                               # [..., n, r, s, K]
    diag_qk = torch.einsum("...rk,...rsk->...rs", qs, kdec)
    strict = torch.ones(c, c, dtype=torch.bool, device=dev).tril(-1)
    diag_kk = torch.einsum("...rk,...rsk->...rs", ks, kdec) * strict

    # Off-diagonal sub-blocks (row sub-chunk a, column sub-chunk b < a) via Gamma_a.
    zero = torch.zeros_like(Gs[..., :1, 0, :])
    gamma = torch.cat([zero, Gs[..., :-1, -1, :]], dim=-2)          # [..., n, K]
    row = (Gs - gamma[..., None, :]).exp()                           # [..., a, c, K], ≤ 1
    earlier = torch.ones(n, n, dtype=torch.bool, device=dev).tril(-1)  # b < a
    col = _masked_exp(gamma[..., :, None, None, :] - Gs[..., None, :, :, :],
                      earlier[:, :, None, None])                     # [..., a, b, c, K], ≤ 1
    kcol = col * ks[..., None, :, :, :]
    off_qk = torch.einsum("...ark,...absk->...arbs", qs * row, kcol)
    off_kk = torch.einsum("...ark,...absk->...arbs", ks * row, kcol)

    eye = torch.eye(n, dtype=q.dtype, device=dev)
    A_qk = off_qk + torch.einsum("...ars,ab->...arbs", diag_qk, eye)
    A_kk = off_kk + torch.einsum("...ars,ab->...arbs", diag_kk, eye)
    return A_qk.reshape(*q.shape[:-1], C), A_kk.reshape(*q.shape[:-1], C)


def chunk_kda(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
              scale: float | None = None, initial_state: Tensor | None = None,
              output_final_state: bool = False, chunk_size: int = 16,
              subchunk_size: int | None = None, segment_size: int = 256) -> tuple[Tensor, Tensor | None]:
    """KDA by the chunkwise WY / UT algorithm; equal to `recurrent_kda` up to rounding.

    Args:
        q, k: [B, T, H, K], L2-normalised; q is multiplied by `scale` here.
        v: [B, T, H, V].
        g: [B, T, H, K], log-space per-channel decay (≤ 0); the decay factor is exp(g).
        beta: [B, T, H], write strength in (0, 1).
        scale: query scale; defaults to K ** -0.5.
        initial_state: [B, H, K, V] state before the first token, or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: chunk length C (4, 8, 16, 32, 64, ...). T need not be a multiple: the input
            is right-padded with q = k = v = 0, g = 0, beta = 0 (writes and decays nothing).
        subchunk_size: length c of the sub-chunks pairwise decays are formed in
            (docs/BACKBONE.md#kda-numerics);
            min(c, C) is used, and it must divide C. None: 4 for C ≤ 16, else 8.
        segment_size: the sequence is run `segment_size` tokens at a time (rounded up to a
            multiple of C), the state carried from one segment to the next, so that the
            intra-chunk tensors of one segment stay cache-sized and the time per token does not
            grow with T (docs/BACKBONE.md#kda-chunkwise-form). Chunks never straddle segments,
            so the result is the one-pass result; 0 = one segment.

    The defaults C = 16, c = 4 were the fastest on a CPU (docs/BENCHMARKS.md#kda-chunk-size):
    per token the pairwise decays of the diagonal sub-blocks cost C·c·K / C = c·K and the
    sub-chunk pairs C·K / c, so c near sqrt(C) balances them, and a smaller C shrinks both,
    while the sequential state update per chunk is only a few small matmuls.

    Returns:
        o: [B, T, H, V] in v's dtype.
        final_state: [B, H, K, V] in fp32 (fp64 for fp64 inputs), or None.
    """
    check_kda_inputs(q, k, v, g, beta, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if subchunk_size is None:
        subchunk_size = 4 if chunk_size <= 16 else 8
    sub = min(subchunk_size, chunk_size)
    if sub < 1 or chunk_size % sub:
        raise ValueError(f"subchunk_size {subchunk_size} must divide chunk_size {chunk_size}")
    if segment_size < 0:
        raise ValueError(f"segment_size must be >= 0, got {segment_size}")
    T = q.shape[1]
    seg = -(-segment_size // chunk_size) * chunk_size if segment_size else T
    if T <= seg:
        return _chunk_kda(q, k, v, g, beta, scale, initial_state, output_final_state,
                          chunk_size, sub)
    # `split`, not slicing: the backward of a slice is a zero tensor of the whole input's size
    # per segment (quadratic in T), that of a split one concatenation.
    outs, S = [], initial_state
    for part in zip(*(x.split(seg, dim=1) for x in (q, k, v, g, beta))):
        o, S = _chunk_kda(*part, scale, S, True, chunk_size, sub)
        outs.append(o)
    return torch.cat(outs, dim=1), (S if output_final_state else None)


def _chunk_kda(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None,
               initial_state: Tensor | None, output_final_state: bool, chunk_size: int,
               sub: int) -> tuple[Tensor, Tensor | None]:
    """One segment of `chunk_kda`, inputs already checked."""
    B, T, H, K = q.shape
    V, out_dtype = v.shape[-1], v.dtype
    acc = accum_dtype(q, k, v, g, beta, initial_state)
    scale = K ** -0.5 if scale is None else scale
    S = (q.new_zeros(B, H, K, V, dtype=acc) if initial_state is None
         else initial_state.to(acc))
    if T == 0:
        return v.new_zeros(v.shape), (S if output_final_state else None)

    C = chunk_size
    N = -(-T // C)
    pad = N * C - T

    def blocks(x: Tensor) -> Tensor:                     # [B, T, H, ...] -> [B, H, N, C, ...]
        x = x.to(acc)
        if x.dim() == 3:
            x = x[..., None]
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        return x.transpose(1, 2).unflatten(2, (N, C))

    q, k, v, g, beta = blocks(q) * scale, blocks(k), blocks(v), blocks(g), blocks(beta)
    G = g.cumsum(dim=-2)                                  # [B, H, N, C, K], restarts per chunk

    A_qk, A_kk = _intra_chunk(q, k, G, sub)               # [B, H, N, C, C]
    eye = torch.eye(C, dtype=acc, device=q.device)
    rhs = torch.cat([beta * G.exp() * k, beta * v], dim=-1)  # Diag(β)[e^G ⊙ K, V]
    wu = torch.linalg.solve_triangular(eye + beta * A_kk, rhs, upper=False, unitriangular=True)
    W, U_tilde = wu.split([K, V], dim=-1)                 # [B, H, N, C, K], [B, H, N, C, V]

    G_last = G[..., -1:, :]                               # [B, H, N, 1, K]
    k_to_end = k * (G_last - G).exp()                     # e^{G_C - G} ⊙ K, ≤ 1
    end_decay = G_last.exp().transpose(-1, -2)            # [B, H, N, K, 1]
    states, pseudo = [], []
    for i in range(N):
        states.append(S)
        U = U_tilde[:, :, i] - W[:, :, i] @ S             # [B, H, C, V]
        pseudo.append(U)
        S = end_decay[:, :, i] * S + k_to_end[:, :, i].transpose(-1, -2) @ U
    S_in = torch.stack(states, dim=2)                     # [B, H, N, K, V], state entering
    U = torch.stack(pseudo, dim=2)                        # [B, H, N, C, V]
    o = (q * G.exp()) @ S_in + A_qk @ U                   # paper Eq. 9

    o = o.flatten(2, 3).transpose(1, 2)[:, :T]            # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
