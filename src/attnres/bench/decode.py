"""Decode speed and cache size: the Kimi-Linear hybrid against the dense backbone.

KDA layers keep a constant-size state (plus a 3-token conv cache) whatever the context; MLA
layers keep a latent of r_kv + d_rope per token; the dense GQA backbone keeps 2·H_kv·d_h per token
in every layer. The context is prefilled in chunks (so no T×T score matrix is ever built for
long contexts), then `new_tokens` are decoded one at a time with the cache.
"""

from __future__ import annotations

import time

import torch

from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config
from attnres.models.kimi_linear import KimiLinearLM, kimi_linear_config

BUILDERS = {"dense": (DenseLM, dense_config), "kimi-linear": (KimiLinearLM, kimi_linear_config)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_decode_bench(contexts=(256, 2048, 8192), preset: str = "tiny", new_tokens: int = 32,
                     prefill_chunk: int = 512, residual: str = "block", device="cpu",
                     quick: bool = False) -> list[dict]:
    device = torch.device(device)
    if quick:
        contexts, new_tokens, prefill_chunk = (64, 128), 4, 64
    rows = []
    for backbone, (model_cls, make_cfg) in BUILDERS.items():
        torch.manual_seed(0)
        cfg = make_cfg(preset, residual=ResidualConfig(residual),
                       max_seq_len=max(contexts) + new_tokens)
        model = model_cls(cfg).to(device).eval()
        for ctx in contexts:
            gen = torch.Generator().manual_seed(ctx)
            idx = torch.randint(0, cfg.vocab_size, (1, ctx), generator=gen).to(device)
            cache = model.new_cache()
            _sync(device)
            t0 = time.perf_counter()
            for start in range(0, ctx, prefill_chunk):
                logits = model(idx[:, start:start + prefill_chunk], cache=cache)
            _sync(device)
            prefill_s = time.perf_counter() - t0
            nxt = logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                nxt = model(nxt, cache=cache)[:, -1:].argmax(-1)
            _sync(device)
            decode_s = time.perf_counter() - t0
            rows.append(dict(backbone=backbone, preset=preset, context=ctx, device=str(device),
                             prefill_tok_s=ctx / prefill_s, decode_tok_s=new_tokens / decode_s,
                             cache_bytes=cache.nbytes()))
    return rows


def format_decode_table(rows: list[dict]) -> str:
    lines = ["| backbone | context | prefill tok/s | decode tok/s | cache KiB after prefill + decode |",
             "|:---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backbone']} ({r['preset']}) | {r['context']:,} | {r['prefill_tok_s']:,.0f} | "
                     f"{r['decode_tok_s']:,.1f} | {r['cache_bytes'] / 1024:,.1f} |")
    return "\n".join(lines)
