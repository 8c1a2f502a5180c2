"""Depth analyses on one validation batch (docs/THEORY.md#depth-analyses; [AR] Figs. 5 and 8).

- output RMS of every sublayer, RMS(v_l);
- input RMS, RMS(h_l), and the RMS of the carried state after each sublayer;
- gradient norm of every sublayer's backbone parameters (AttnRes reads excluded), before clipping;
- for AttnRes models, the depth-attention weights of every read, averaged over tokens.
"""

from __future__ import annotations

import contextlib

import torch

from attnres.layers.residual import DepthRecord


def depth_analysis(model, x: torch.Tensor, y: torch.Tensor, device: torch.device | None = None,
                   autocast=None) -> dict:
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    record = DepthRecord()
    with (autocast or contextlib.nullcontext)():
        _, loss = model(x.to(device), y.to(device), record=record)
    loss.backward()
    n_sub = model.cfg.n_sublayers
    grad_norms = []
    for group in model.sublayer_parameters():
        sq = sum(float(p.grad.detach().float().pow(2).sum()) for _, p in group if p.grad is not None)
        grad_norms.append(sq ** 0.5)
    act_grad_rms = [
        float(record.outputs[s].grad.float().pow(2).mean().sqrt()) if s in record.outputs
        and record.outputs[s].grad is not None else None for s in range(n_sub)]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    residual = model.residual
    return {
        "kind": residual.kind,
        "block_size": residual.block_size if residual.is_attnres else None,
        "n_sublayers": n_sub,
        "loss": float(loss.detach()),
        "output_rms": [record.output_rms[s] for s in range(n_sub)],
        "input_rms": [record.input_rms[s] for s in range(n_sub)],
        "stream_rms": [record.stream_rms[s] for s in range(n_sub)],
        "grad_norm": grad_norms,
        "output_grad_rms": act_grad_rms,
        # reads 0..L-1 are the sublayer inputs, read L is the final read before the final norm
        "depth_weights": [record.weights[r].tolist() for r in range(n_sub + 1)]
        if residual.is_attnres else None,
    }


@torch.no_grad()
def depth_trace(model, x: torch.Tensor, autocast=None) -> dict | None:
    """How saturated the depth softmax is, for logging during training: per read (0..L-1 the
    sublayer inputs, L the final read), the mean weight on the embedding and the mean normalised
    entropy H(p) / log n over tokens (1 = uniform, 0 = one source; None for a one-source read).
    A read whose embedding weight climbs towards 1 and entropy falls towards 0 within the first
    steps has locked onto the embedding (docs/DESIGN.md#the-read-parameters-learning-rate-residuallr_mult).
    None for models without depth reads."""
    if not model.residual.is_attnres:
        return None
    was_training = model.training
    model.eval()
    record = DepthRecord()
    with (autocast or contextlib.nullcontext)():
        model(x, record=record)
    model.train(was_training)
    reads = range(model.cfg.n_sublayers + 1)
    return {"embedding_weight": [float(record.weights[r][0]) for r in reads],
            "entropy": [record.entropy.get(r) for r in reads]}


def depth_statistics(analysis: dict) -> dict[str, float | None]:
    """A few numbers that carry the shapes [AR] reads off Figs. 5 and 8 (targets A6, A7:
    docs/TARGETS.md#a6-training-dynamics, docs/TARGETS.md#a7-depth-attention-patterns).

    - `stream_growth`: carried-state RMS after the last sublayer / after the first (A6b: the
      PreNorm baseline grows with depth); `stream_increasing`: the share of sublayers after
      which it grew.
    - `output_growth`: RMS(v_L) / RMS(v_1).
    - `grad_spread`: max / min gradient norm over sublayers (A6c: Block is more uniform);
      `grad_early`: the first quarter's mean gradient norm / the rest's (A6c: the baseline's
      earliest layers are disproportionately large).
    - AttnRes only (None otherwise), over the reads with two or more sources: `locality`, the
      share of reads whose largest weight is on the most recent source (A7.1); `latest_mixer` /
      `latest_ffn`, the mean weight on the most recent source before mixers / before FFNs
      (A7.3: sharper before FFNs); `embedding_mixer` / `embedding_ffn`, the mean weight on the
      embedding (A7.2: kept, most before mixers). The final read counts as neither kind.
    """
    stream, out, grad = analysis["stream_rms"], analysis["output_rms"], analysis["grad_norm"]
    quarter = max(1, len(grad) // 4)
    early, rest = grad[:quarter], grad[quarter:] or grad[:quarter]
    stats: dict[str, float | None] = {
        "stream_growth": stream[-1] / stream[0],
        "stream_increasing": sum(b > a for a, b in zip(stream, stream[1:])) / max(1, len(stream) - 1),
        "output_growth": out[-1] / out[0],
        "grad_spread": max(grad) / min(grad),
        "grad_early": (sum(early) / len(early)) / (sum(rest) / len(rest)),
    }
    keys = ("locality", "latest_mixer", "latest_ffn", "embedding_mixer", "embedding_ffn")
    weights = analysis.get("depth_weights")
    stats.update(dict.fromkeys(keys))
    if not weights:
        return stats
    reads = [(r, w) for r, w in enumerate(weights) if len(w) >= 2]
    sublayer_reads = [(r, w) for r, w in reads if r < len(weights) - 1]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    stats["locality"] = mean([float(max(range(len(w)), key=w.__getitem__) == len(w) - 1) for _, w in reads])
    for kind, parity in (("mixer", 0), ("ffn", 1)):  # read r precedes sublayer r + 1: even = mixer
        mine = [w for r, w in sublayer_reads if r % 2 == parity]
        stats[f"latest_{kind}"] = mean([w[-1] for w in mine])
        stats[f"embedding_{kind}"] = mean([w[0] for w in mine])
    return stats
