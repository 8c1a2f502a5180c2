"""The dense backbone under every residual kind (invariants I12, I13; I2 is in test_drop_in.py)."""

import pytest
import torch

from attnres.config import ResidualConfig
from attnres.models.dense import DenseLM, dense_config


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def build(residual, seed=0, **kw):
    """The tiny dense model; keyword arguments that name ResidualConfig fields go there."""
    torch.manual_seed(seed)
    fields = ResidualConfig.__dataclass_fields__
    res = ResidualConfig(residual, **{k: kw.pop(k) for k in list(kw) if k in fields})
    return DenseLM(dense_config("tiny", residual=res, **kw))


def backbone_state(model):
    return {k: v for k, v in model.state_dict().items() if ".res_" not in k and not k.startswith("final_res")}


def test_backbone_initialisation_does_not_depend_on_the_residual_kind():
    states = [backbone_state(build(kind, block_size=2)) for kind in ("prenorm", "full", "block")]
    assert states[0].keys() == states[1].keys() == states[2].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]) and torch.equal(states[0][k], states[2][k]), k


def test_attnres_parameter_count_and_dtype():
    model = build("block", block_size=2)
    cfg = model.cfg
    attnres = {n: p for n, p in model.named_parameters() if ".res_" in n or n.startswith("final_res")}
    assert sum(p.numel() for p in attnres.values()) == 2 * cfg.d_model * (cfg.n_sublayers + 1)
    assert all(p.dtype == torch.float32 for p in attnres.values())
    assert "layers.0.res_mixer.query" in attnres and "layers.3.res_ffn.key_norm.weight" in attnres
    assert "final_res.query" in attnres


@pytest.mark.parametrize("residual,S", [("full", 1), ("block", 2), ("block", 3)])
def test_two_phase_and_naive_models_match_recompute(residual, S):
    """The implementation switch changes nothing but the schedule (fp64, outputs and grads)."""
    torch.manual_seed(3)
    idx = torch.randint(0, 256, (2, 16))
    results = {}
    for impl in ("recompute", "two_phase", "naive"):
        model = build(residual, block_size=S, impl=impl, two_phase_group=3).double()
        with torch.no_grad():  # non-zero queries so the softmax is not uniform
            for p in model.parameters():
                if p.dim() == 1 and p.shape[0] == model.cfg.d_model:
                    p.add_(0.3 * torch.randn_like(p))
        logits, loss = model(idx, idx)
        loss.backward()
        results[impl] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                           if p.grad is not None})
    ref_logits, ref_grads = results["naive"]
    for impl in ("recompute", "two_phase"):
        logits, grads = results[impl]
        assert rel(logits, ref_logits) < 1e-10
        assert grads.keys() == ref_grads.keys()
        for n in ref_grads:
            assert rel(grads[n], ref_grads[n]) < 1e-9, (impl, n)


@pytest.mark.parametrize("residual", ["prenorm", "full", "block"])
def test_cached_generation_equals_full_recomputation(residual):
    """In fp64: the cached and the full pass sum in another order, and in fp32 that rounding
    (a few 1e-6 through the whole model, more on some CPUs) could flip a greedy near-tie."""
    model = build(residual, block_size=2).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    prompt = torch.randint(0, 256, (2, 5))
    cached = model.generate(prompt, 20, temperature=0)
    full = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    # chunked prefill with a cache gives the logits of one full pass
    idx = torch.randint(0, 256, (1, 30))
    cache = model.new_cache()
    with torch.no_grad():
        parts = [model(idx[:, :11], cache=cache), model(idx[:, 11:12], cache=cache),
                 model(idx[:, 12:], cache=cache)]
        assert rel(torch.cat(parts, dim=1), model(idx)) < 1e-10


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="n_heads"):
        dense_config("tiny", n_heads=5)
    with pytest.raises(ValueError, match="preset"):
        dense_config("huge")
    model = build("prenorm")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 129, dtype=torch.long))
