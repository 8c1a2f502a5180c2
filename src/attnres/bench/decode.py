"""Decode speed and cache size: the Kimi-Linear hybrid against the dense backbone.

KDA layers keep a constant-size state (plus a 3-token conv cache) whatever the context; MLA
layers keep a latent of r_kv + d_rope per token; the dense GQA backbone keeps 2·H_kv·d_h per token
in every layer. The context is prefilled in chunks (so no T×T score matrix is ever built for
long contexts), then `new_tokens` are decoded one at a time with the cache.
"""

from __future__ import annotations

import time

import torch

from attnres.bench.timing import sync
from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config
from attnres.models.kimi_linear import KimiLinearLM, kimi_linear_config

BUILDERS = {"dense": (DenseLM, dense_config), "kimi-linear": (KimiLinearLM, kimi_linear_config)}


def _greedy(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    """Feed `tokens` through the cache; the next token, greedily, as `generate` picks it."""
    return model(tokens, cache=cache)[:, -1:].argmax(-1)


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
            sync(device)
            t0 = time.perf_counter()
            for start in range(0, ctx, prefill_chunk):
                logits = model(idx[:, start:start + prefill_chunk], cache=cache)
            sync(device)
            prefill_s = time.perf_counter() - t0
            nxt = logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(new_tokens):
                nxt = _greedy(model, nxt, cache)
            sync(device)
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


RESIDUAL_ARMS = ("prenorm", "block", "full")


def _residual_model(preset: str, arm: str, max_seq_len: int, device) -> DenseLM:
    """The dense model with residual `arm`, built from seed 0 (every arm shares the backbone
    weights), in eval mode."""
    torch.manual_seed(0)
    cfg = dense_config(preset, residual=ResidualConfig(arm), max_seq_len=max_seq_len)
    return DenseLM(cfg).to(device).eval()


def _prompt(vocab_size: int, batch: int, length: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, length), generator=gen).to(device)


@torch.no_grad()
def run_residual_decode_bench(preset: str = "small", arms=RESIDUAL_ARMS, new_tokens: int = 200,
                              prompt: int = 16, rounds: int = 3, batch: int = 1,
                              device="cpu", reference_reads: bool = False,
                              quick: bool = False) -> list[dict]:
    """Greedy decoding with the KV cache on the dense backbone, one row per residual arm.

    Every arm is built from the same seed, prefills the same prompt and then decodes greedily,
    as `generate` does. The arms are interleaved token by token (each decoding step is timed for
    every arm in a rotating order before the next step), so load from other processes hits them
    alike; `ratio` is the median over all (round, step) pairs of the step's time over the first
    arm's. `reference_reads` adds, for every AttnRes arm, the same model decoding with the
    training-path reads (`Residual.fast_inference = False`): the before and after of the
    inference reads in one process; `same_tokens` says whether an arm's tokens equal its
    reference's."""
    device = torch.device(device)
    if quick:
        preset, new_tokens, prompt, rounds = "tiny", 8, 4, 1
    models = {}
    for arm in arms:
        models[arm] = _residual_model(preset, arm, max(prompt + new_tokens, 8), device)
        if reference_reads and arm != "prenorm":
            ref = _residual_model(preset, arm, max(prompt + new_tokens, 8), device)
            ref.residual.fast_inference = False
            models[f"{arm} (reference reads)"] = ref
    names = list(models)
    idx = _prompt(models[names[0]].cfg.vocab_size, batch, prompt, device)
    times = {name: [] for name in names}
    tokens = {}
    for r in range(rounds + 1):  # round 0 warms up and is not timed
        caches = {name: models[name].new_cache() for name in names}
        nxt = {name: _greedy(models[name], idx, caches[name]) for name in names}
        out = {name: [] for name in names}
        for step in range(new_tokens):
            k = step % len(names)
            for name in names[k:] + names[:k]:
                sync(device)
                t0 = time.perf_counter()
                nxt[name] = _greedy(models[name], nxt[name], caches[name])
                sync(device)
                if r:
                    times[name].append(time.perf_counter() - t0)
                out[name].append(nxt[name])
        tokens = {name: torch.cat(out[name], 1) for name in names}
    rows = []
    for name in names:
        ratios = sorted(t / b for t, b in zip(times[name], times[names[0]]))
        ref = tokens.get(f"{name} (reference reads)")
        rows.append(dict(arm=name, preset=preset, batch=batch, new_tokens=new_tokens,
                         rounds=rounds, threads=torch.get_num_threads(), device=str(device),
                         tok_s=len(times[name]) * batch / sum(times[name]),
                         ratio=ratios[len(ratios) // 2],
                         same_tokens=None if ref is None else bool(torch.equal(ref, tokens[name]))))
    return rows


def format_residual_decode_table(rows: list[dict]) -> str:
    lines = ["| residual | decode tok/s | time / prenorm (median of paired steps) | same tokens as reference reads |",
             "|:---|---:|---:|:---:|"]
    for r in rows:
        same = "" if r["same_tokens"] is None else ("yes" if r["same_tokens"] else "**no**")
        lines.append(f"| {r['arm']} | {r['tok_s']:,.1f} | {r['ratio']:.3f} | {same} |")
    return "\n".join(lines)


@torch.no_grad()
def count_decode_kernels(preset: str = "small", arms=RESIDUAL_ARMS, new_tokens: int = 50,
                         prompt: int = 16, device="cpu") -> list[dict]:
    """aten calls and profiled self-CPU µs per decoded token, one row per residual arm (same
    setting as `run_residual_decode_bench`): at batch 1 each call is a kernel launch of a few
    µs, so the count is the floor a read's cost cannot go below without fusing kernels."""
    from torch.profiler import ProfilerActivity, profile
    device = torch.device(device)
    rows = []
    for arm in arms:
        model = _residual_model(preset, arm, prompt + new_tokens + 8, device)
        cache = model.new_cache()
        nxt = _greedy(model, _prompt(model.cfg.vocab_size, 1, prompt, device), cache)
        for _ in range(4):                                # warm-up, not profiled
            nxt = _greedy(model, nxt, cache)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(new_tokens):
                nxt = _greedy(model, nxt, cache)
        events = prof.key_averages()
        rows.append(dict(arm=arm, preset=preset, new_tokens=new_tokens,
                         aten_calls=sum(e.count for e in events if e.key.startswith("aten::")) / new_tokens,
                         self_cpu_us=sum(e.self_cpu_time_total for e in events) / new_tokens))
    return rows


def format_decode_kernels_table(rows: list[dict]) -> str:
    lines = ["| residual | aten calls / token | × prenorm | profiled self-CPU µs / token |",
             "|:---|---:|---:|---:|"]
    base = rows[0]["aten_calls"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['aten_calls']:,.0f} | {r['aten_calls'] / base:.2f} "
                     f"| {r['self_cpu_us']:,.0f} |")
    return "\n".join(lines)
