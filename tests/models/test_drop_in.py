"""AttnRes as an exact drop-in at the shipped defaults (invariant I2, docs/DESIGN.md#exact-drop-in-at-step-0).

With zero-initialised read parameters, every sublayer input after its PreNorm and the logits
equal the PreNorm baseline's at the configured ε (not only at ε = 0), on both backbones, for
every block size (also sizes that do not divide L) and for the read variants that start as a
multiple of the baseline's hidden state. fp64 at rel ≤ 1e-10; fp32 at rel ≤ 1e-5 (the two
paths sum the same terms in another order: through 8 sublayers that is a few 1e-7).
"""

import pytest
import torch

from attnres import config
from attnres.config import ResidualConfig
from attnres.layers.residual import Residual
from attnres.train.build import build_model

BACKBONES = ("dense", "kimi-linear")
BLOCK_SIZES = (1, 2, 3, 4, 5, 8, 9)   # L = 8: 3 and 5 leave a short last block, 9 > L
VARIANTS = {                          # read variants that start exactly as a multiple of h_l
    "input-query": ["residual.query=input_dependent"],
    "static-mixing": ["residual.mixing=static"],
    "sigmoid": ["residual.kernel=sigmoid"],
    "no-key-norm": ["residual.key_norm=none"],
    "multihead": ["residual.heads=4"],
}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def model_for(backbone, residual, block_size=4, extra=()):
    """The shipped default config (norm ε 1e-5, key ε 1e-6, init std 0.02) of `backbone`;
    kimi-linear with dense FFNs, so that rounding cannot flip a top-k routing choice."""
    overrides = [f"model.backbone={backbone}", f"residual.kind={residual}", *extra]
    if residual == "block":
        overrides.append(f"residual.block_size={block_size}")
    if backbone == "kimi-linear":
        overrides.append("model.first_k_dense=4")
    return build_model(config.load(overrides=overrides), vocab_size=256).eval()


def normed_inputs(model, idx):
    """Every sublayer input after its PreNorm, then the final norm's output, then the logits."""
    seen = []
    norms = [n for layer in model.layers for n in (layer.attn_norm, layer.ffn_norm)] + [model.norm]
    hooks = [n.register_forward_hook(lambda m, i, o: seen.append(o)) for n in norms]
    try:
        with torch.no_grad():
            logits = model(idx)
    finally:
        for h in hooks:
            h.remove()
    return seen + [logits]


def assert_same_as_baseline(model, base, dtype, tol):
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
    ours, theirs = normed_inputs(model.to(dtype), idx), normed_inputs(base.to(dtype), idx)
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert rel(a, b) < tol, f"tensor {k} of {len(ours)}: rel {rel(a, b):.3g}"


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("S", BLOCK_SIZES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_block_and_full_start_as_the_baseline_at_the_default_eps(backbone, S, dtype, tol):
    residual = "full" if S == 1 else "block"
    assert_same_as_baseline(model_for(backbone, residual, S), model_for(backbone, "prenorm"), dtype, tol)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("residual", ["full", "block"])
def test_read_variants_start_as_the_baseline_at_the_default_eps(residual, variant):
    model = model_for("dense", residual, extra=VARIANTS[variant])
    assert_same_as_baseline(model, model_for("dense", "prenorm"), torch.float64, 1e-10)


def test_step1_training_loss_equals_the_baselines():
    """What a user checks first: the loss of the first training batch, in fp32."""
    idx = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(2))
    for backbone in BACKBONES:
        losses = {}
        for residual in ("prenorm", "full", "block"):
            _, loss = model_for(backbone, residual).train()(idx[:, :-1], idx[:, 1:])
            losses[residual] = loss.item()
        for residual in ("full", "block"):
            assert abs(losses[residual] / losses["prenorm"] - 1) < 1e-5, (backbone, losses)


def test_without_the_scaled_eps_the_drop_in_breaks(monkeypatch):
    """Negative control: the tests above can fail. With every PreNorm at the plain ε, the mean
    of the sources (RMS ≈ 0.003–0.01 at init std 0.02) is shrunk by ε = 1e-5."""
    monkeypatch.setattr(Residual, "norm_eps", lambda self, sub, eps: eps)
    model, base = model_for("dense", "full"), model_for("dense", "prenorm")
    with pytest.raises(AssertionError, match="rel"):
        assert_same_as_baseline(model, base, torch.float64, 1e-3)


def test_norm_eps_is_eps_over_n_squared_per_read():
    """L = 8, S = 4: the reads see 1, 2, 2, 2, 2, 3, 3, 3 sources and the final read 3."""
    r = Residual(ResidualConfig("block", block_size=4), n_sublayers=8)
    assert [r.norm_eps(s, 1.0) for s in range(9)] == [1, 1 / 4, 1 / 4, 1 / 4, 1 / 4, 1 / 9, 1 / 9, 1 / 9, 1 / 9]
    assert Residual(ResidualConfig("prenorm")).norm_eps(3, 1e-5) == 1e-5
    assert Residual(ResidualConfig("full"), n_sublayers=8).norm_eps(8, 1.0) == 1 / 81
