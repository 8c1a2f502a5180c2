"""MoE dispatch: sorted (grouped by expert, index_add_) against the dense naive reference, for the
output and every gradient, with idle experts, repeated experts and edge cases."""

import pytest
import torch

from attnres.ops.moe import moe_dispatch, naive_moe, sort_by_expert, sorted_moe

D, DE = 12, 7        # d ≠ d_e so a transposed expert weight cannot pass


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(N, E, expert_ids, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()

    k = expert_ids.shape[1]
    return dict(x=randn(N, D), w1=randn(E, DE, D), w3=randn(E, DE, D), w2=randn(E, D, DE),
                expert_ids=expert_ids, weights=randn(N, k))


def run_with_grads(op, inputs, seed=1):
    y = op(**inputs)
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    leaves = {n: t for n, t in inputs.items() if n != "expert_ids"}
    grads = torch.autograd.grad((y * dy).sum(), list(leaves.values()))
    return y, dict(zip(leaves, grads))


def distinct_topk(N, E, k, seed=0):
    """Distinct experts per token, as a router's top-k gives."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(N, E, generator=gen).topk(k, dim=-1).indices


CASES = {
    "N40_E8_k2": (40, 8, distinct_topk(40, 8, 2)),
    "N33_E6_k3": (33, 6, distinct_topk(33, 6, 3)),
    # experts 1, 4 and 6 get no tokens
    "idle_experts": (20, 7, torch.tensor([0, 2, 3, 5])[distinct_topk(20, 4, 2, seed=3)]),
    # every token on the same expert pair; one token lists expert 2 in both slots
    "repeats": (9, 5, torch.tensor([[2, 3]] * 8 + [[2, 2]])),
    "one_token": (1, 4, torch.tensor([[3, 0]])),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_sorted_matches_naive_fp64(case):
    N, E, ids = CASES[case]
    inputs = make_inputs(N, E, ids)
    y_ref, g_ref = run_with_grads(naive_moe, inputs)
    y, g = run_with_grads(sorted_moe, inputs)
    assert y.dtype == torch.float64
    assert rel(y, y_ref) < 1e-13
    for name in g_ref:
        assert rel(g[name], g_ref[name]) < 1e-12, name


def test_idle_experts_get_zero_gradient():
    N, E, ids = CASES["idle_experts"]
    used = set(ids.flatten().tolist())
    assert used != set(range(E))
    inputs = make_inputs(N, E, ids)
    _, g = run_with_grads(sorted_moe, inputs)
    for e in set(range(E)) - used:
        for name in ("w1", "w3", "w2"):
            assert g[name][e].abs().max() == 0


def test_fp32_close_and_deterministic():
    N, E, ids = CASES["N40_E8_k2"]
    inputs = make_inputs(N, E, ids, dtype=torch.float32)
    y_ref, g_ref = run_with_grads(naive_moe, inputs)
    y, g = run_with_grads(sorted_moe, inputs)
    y2, g2 = run_with_grads(sorted_moe, inputs)
    assert rel(y, y_ref) < 1e-5
    for name in g_ref:
        assert rel(g[name], g_ref[name]) < 1e-5, name
        assert torch.equal(g[name], g2[name]), name
    assert torch.equal(y, y2)


def test_mixed_dtypes_return_x_dtype():
    """bf16 tokens and experts with fp32 router weights: summed in fp32, returned in bf16."""
    N, E, ids = CASES["N40_E8_k2"]
    inputs = make_inputs(N, E, ids)
    ref = naive_moe(**{n: t.detach() for n, t in inputs.items()})
    low = {n: t.detach().to(torch.bfloat16) if n in ("x", "w1", "w3", "w2") else t.detach()
           for n, t in inputs.items()}
    low["weights"] = low["weights"].float()
    for op in (naive_moe, sorted_moe):
        y = op(**low)
        assert y.dtype == torch.bfloat16
        assert rel(y.double(), ref) < 3e-2


def test_sort_by_expert():
    ids = torch.tensor([[2, 0], [0, 1], [2, 1]])
    order, counts = sort_by_expert(ids, n_experts=4)
    assert counts.tolist() == [2, 2, 2, 0]
    assert ids.reshape(-1)[order].tolist() == [0, 0, 1, 1, 2, 2]
    assert order.tolist() == [1, 2, 3, 5, 0, 4]           # stable: token order inside a group


def test_no_tokens():
    inputs = make_inputs(0, 3, torch.zeros(0, 2, dtype=torch.int64))
    y = sorted_moe(**inputs)
    assert y.shape == (0, D)


def test_dispatch_impls():
    N, E, ids = CASES["N33_E6_k3"]
    inputs = {n: t.detach() for n, t in make_inputs(N, E, ids).items()}
    ref = naive_moe(**inputs)
    for impl in ("sorted", "naive", "auto"):
        assert rel(moe_dispatch(**inputs, impl=impl), ref) < 1e-13
    with pytest.raises(ValueError, match="unknown MoE dispatch impl"):
        moe_dispatch(**inputs, impl="grouped")
