"""Depth analyses on one validation batch (spec attnres.md §14; [AR] Figs. 5 and 8).

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
