"""Pipeline parallelism with AttnRes cross-stage caching (docs/THEORY.md#cross-stage-caching,
invariant I10).

Two spawns of gloo processes on localhost (P = 2 and P = 4) run every case once; each rank
compares the pipelined loss and its stage's gradients with the single-process model it also
builds, and rank 0 writes the worst relative errors and the measured block counts to a JSON file
that the parametrised tests below read.
"""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from attnres import units
from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config
from attnres.models.kimi_linear import KimiLinearLM, kimi_linear_config
from attnres.parallel import aligned_counts, pp_plan
from attnres.parallel.pipeline import PipelineRunner, payload_header, split_stages

B, T, VOCAB = 4, 8, 32

# name: (P, V, M, n_layers, residual, block_size, cache, extra)
CASES = {
    # aligned, N_p = 1: naive (C−1) + N_p·C(C−1)/2 = 9,
    # cached (P−1) + N_p·[P(P−1)/2 + (V−1)P²] = 6
    "p2v2-aligned-cached": (2, 2, 2, 4, "block", 2, True, {}),
    "p2v2-aligned-naive": (2, 2, 2, 4, "block", 2, False, {}),
    # 6 sublayers in chunks [2, 2, 1, 1]: the last layer is cut between its mixer and FFN, and
    # blocks of 3 close mid-chunk, so partials travel
    "p2v2-split-layer-cached": (2, 2, 2, 3, "block", 3, True, {}),
    "p2v2-split-layer-naive": (2, 2, 2, 3, "block", 3, False, {}),
    "p2v2-own-blocks": (2, 2, 2, 4, "block", 2, True, {"cache_own_blocks": True}),
    "p2v2-prenorm": (2, 2, 2, 4, "prenorm", 2, True, {}),
    "p2v1-block": (2, 1, 2, 2, "block", 3, True, {}),
    "p2v2-block-fp32": (2, 2, 2, 4, "block", 3, True, {"dtype": "float32"}),
    # KDA/MLA layers and MoE FFNs whose balance loss is trained inside intermediate stages
    "p2v2-kimi-moe-aux": (2, 2, 2, 4, "block", 2, True, {"backbone": "kimi"}),
    # Fig. 3: P = 4, V = 2, 8 layers = 16 sublayers, 2 per chunk, S = 4: N_p = 1/2
    "fig3-cached": (4, 2, 4, 8, "block", 4, True, {}),
    "fig3-naive": (4, 2, 4, 8, "block", 4, False, {}),
    "p4v2-full": (4, 2, 4, 8, "full", 1, True, {}),
}


def make_model(n_layers, residual, block_size, dtype=torch.float64, backbone="dense"):
    torch.manual_seed(0)
    shape = dict(n_layers=n_layers, d_model=16, vocab_size=VOCAB, max_seq_len=T,
                 residual=ResidualConfig(residual, block_size=block_size if residual == "block" else 0))
    if backbone == "kimi":
        cfg = kimi_linear_config("tiny", **shape, kda_heads=2, kda_head_dim=8, gate_rank=4,
                                 chunk_size=8, mla_heads=2, d_nope=8, d_rope=4, d_v=8,
                                 kv_lora_rank=4, n_experts=4, top_k=2, d_expert=8,
                                 dense_width=24, aux_loss_coef=0.01)
        model = KimiLinearLM(cfg).to(dtype)
    else:
        model = DenseLM(dense_config("tiny", **shape, n_heads=2, n_kv_heads=1, d_ff=32)).to(dtype)
    with torch.no_grad():   # non-uniform depth softmaxes, so every read's gradient matters
        for read in model.reads():
            if read is not None:
                read.query.normal_(0.0, 0.5)
                read.key_norm.weight.uniform_(0.5, 1.5)
    return model


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_case(name, rank):
    P, V, M, n_layers, residual, S, cache, extra = CASES[name]
    dtype = getattr(torch, extra.get("dtype", "float64"))
    backbone = extra.get("backbone", "dense")
    ref = make_model(n_layers, residual, S, dtype, backbone)
    model = make_model(n_layers, residual, S, dtype, backbone)
    runner = PipelineRunner(model, P, V, cache=cache, n_microbatches=M,
                            cache_own_blocks=extra.get("cache_own_blocks", False))
    out = {"loss": 0.0, "grad": 0.0, "norm": 0.0, "eval": 0.0, "foreign_grads": 0}
    for step in range(2):      # the second step reuses the schedule's buffers and the caches
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, VOCAB, (B, T), generator=g)
        y = torch.randint(0, VOCAB, (B, T), generator=g)
        ref.zero_grad(set_to_none=True)
        if dtype == torch.float64:   # fp64 cross-entropy (DecoderLM's is fp32) + MoE side losses
            ref_loss = F.cross_entropy(ref(x).flatten(0, 1), y.flatten()) + ref.auxiliary_loss()
        else:
            _, ref_loss = ref(x, y)            # the model's own loss (fp32 cross-entropy)
        ref_loss.backward()
        runner.zero_grad()
        loss, stats = runner.train_step(x, y)
        out["loss"] = max(out["loss"], abs(loss - ref_loss.item()) / abs(ref_loss.item()))
        ref_grads = dict(ref.named_parameters())
        for n, p in runner.named_parameters():
            if ref_grads[n].grad is None:      # the first read's query (a single source)
                assert p.grad is None or not p.grad.any(), n
                continue
            out["grad"] = max(out["grad"], rel(p.grad, ref_grads[n].grad))
        own = {n for n, _ in runner.named_parameters()}
        out["foreign_grads"] += sum(p.grad is not None for n, p in model.named_parameters()
                                    if n not in own)
        ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()
                                                  if p.grad is not None]).item()
        out["norm"] = max(out["norm"], abs(runner.global_grad_norm() - ref_norm) / ref_norm)
    with torch.no_grad():
        ref_eval = F.cross_entropy(ref(x).to(torch.promote_types(dtype, torch.float32))
                                   .flatten(0, 1), y.flatten()).item()
    out["eval"] = abs(runner.eval_loss(x, y) - ref_eval) / ref_eval
    worst = torch.tensor([out["loss"], out["grad"], out["norm"], out["eval"],
                          out["foreign_grads"]], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    out.update(zip(["loss", "grad", "norm", "eval", "foreign_grads"], worst.tolist()))
    plan = runner.plan
    out.update(sent=stats["pp_block_vectors_sent"], planned=stats["pp_block_vectors_planned"],
               peak=stats["pp_peak_block_vectors"], naive=plan.naive_total,
               cached=plan.cached_total, plan_peak=plan.peak if residual != "prenorm" else 0)
    return out


def worker(rank, P, port, names, path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=P)
    try:
        results = {name: run_case(name, rank) for name in names}
        if rank == 0:
            with open(path, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {}
    for P in (2, 4):
        names = [n for n, case in CASES.items() if case[0] == P]
        path = tmp_path_factory.mktemp(f"pp{P}") / "results.json"
        mp.spawn(worker, args=(P, free_port(), names, str(path)), nprocs=P, join=True)
        out.update(json.loads(path.read_text()))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_pipelined_loss_and_gradients_match_one_process(results, name):
    r = results[name]
    tol = 1e-4 if CASES[name][7].get("dtype") == "float32" else 1e-10
    assert r["loss"] <= tol and r["eval"] <= tol, r
    assert r["grad"] <= tol, r
    assert r["norm"] <= tol, r
    assert r["foreign_grads"] == 0, r      # gradients land only in each rank's stage


@pytest.mark.parametrize("name", list(CASES))
def test_block_vectors_sent_match_the_plan(results, name):
    r = results[name]
    residual, cache = CASES[name][4], CASES[name][6]
    assert r["sent"] == r["planned"] == (0 if residual == "prenorm" else
                                         r["cached"] if cache else r["naive"])
    assert r["peak"] == r["plan_peak"]


def test_fig3_and_aligned_counts(results):
    assert results["fig3-naive"]["sent"] == 19 and results["fig3-cached"]["sent"] == 13
    naive, cached = aligned_counts(2, 2, 1)
    assert (naive, cached) == (9, 6)
    assert results["p2v2-aligned-naive"]["sent"] == naive
    assert results["p2v2-aligned-cached"]["sent"] == cached
    # 6 sublayers in chunks [2, 2, 1, 1], S = 3: [b0], [b0,b1], [b0,b1] vs [b0], +[b1], +[b1]
    assert results["p2v2-split-layer-naive"]["sent"] == 5
    assert results["p2v2-split-layer-cached"]["sent"] == 3
    # ranks also keep the blocks they closed: 1→2 [b0,b1], 2→3 +[b2], 3→4 +[b3]
    assert results["p2v2-own-blocks"]["sent"] == 4


def test_split_assigns_chunks_and_parameters():
    model = make_model(3, "block", 3)
    chunks, plan = split_stages(model, 2, 2)
    assert [(c.index, c.rank, c.vstage) for c in chunks] == [(1, 0, 0), (2, 1, 0), (3, 0, 1),
                                                             (4, 1, 1)]
    assert [[s.sub for s in c.sublayers] for c in chunks] == [[0, 1], [2, 3], [4], [5]]
    assert chunks[0].embed_tokens is model.embed_tokens and chunks[-1].lm_head is model.lm_head
    assert chunks[2].sublayers[0].f is model.layers[2].self_attn       # layer 2 cut in two
    assert chunks[3].sublayers[0].f is model.layers[2].mlp
    assert chunks[0]._cache is chunks[2]._cache is not chunks[1]._cache


def test_headers_carry_the_partial_only_when_a_block_is_open():
    plan = pp_plan(4, 2, units.block_closes(16, 4), 16)               # Fig. 3
    assert [payload_header(plan, t, cache=True) for t in range(1, 8)] == [
        (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 2, 0), (1, 2, 1), (2, 2, 0), (2, 2, 1)]
    assert [payload_header(plan, t, cache=False)[:2] for t in range(1, 8)] == [
        (0, 1), (0, 2), (0, 2), (0, 3), (0, 3), (0, 4), (0, 4)]
    assert payload_header(plan, 3, cache=True, prenorm=True) == (0, 0, 1)


def test_unsupported_residuals_are_refused():
    torch.manual_seed(0)
    cfg = dense_config("tiny", n_layers=2, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32,
                       vocab_size=VOCAB, residual=ResidualConfig("denseformer"))
    with pytest.raises(ValueError, match="not supported"):
        split_stages(DenseLM(cfg), 2, 1)
