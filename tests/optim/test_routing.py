"""Tag-based routing (docs/OPTIM.md#parameter-routing) and HybridOptimizer: groups, decay,
scheduler, resume."""

import io

import pytest
import torch
from torch import nn

from attnres import tags
from attnres.optim import HybridOptimizer, Muon, build_optimizer, build_scheduler, route_parameters
from attnres.optim import torch_muon_available


class Toy(nn.Module):
    """Embedding, a hidden matrix, a 3-D expert stack, a norm gain, an AttnRes query, a head."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d, bias=False)
        self.experts = nn.Parameter(torch.randn(2, d, d) * 0.1)   # [E, out, in]
        self.norm = nn.Parameter(torch.ones(d))
        self.query = nn.Parameter(torch.zeros(d))                  # AttnRes pseudo-query
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)  # untagged, not trained
        tags.set_group(self.embed_tokens.weight, tags.ADAMW)
        tags.set_group(self.proj.weight, tags.MUON)
        tags.set_group(self.experts, tags.MUON)
        tags.set_group(self.norm, tags.ADAMW)
        tags.set_group(self.query, tags.ADAMW_NO_DECAY)
        tags.set_group(self.lm_head.weight, tags.ADAMW)

    def forward(self, idx):
        h = self.embed_tokens(idx)                                      # [B, T, d]
        h = h + torch.tanh(self.proj(h))
        h = h + torch.einsum("btd,eod->bto", h, self.experts)
        h = h * self.norm + self.query
        return self.lm_head(h)                                          # [B, T, vocab]


def loss_fn(model, idx):
    logits = model(idx[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())


def same(params, expected):
    return len(params) == len(expected) and all(p is q for p, q in zip(params, expected))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 11, (2, 6), generator=g) for _ in range(n)]


def train(model, opt, sched, data):
    for idx in data:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, idx).backward()
        opt.step()
        sched.step()


def test_routes_by_tag():
    routes = route_parameters(Toy())
    names = {g: [n for n, _ in named] for g, named in routes.items()}
    assert names == {
        tags.MUON: ["experts", "proj.weight"],  # a module's own parameters come first
        tags.ADAMW: ["norm", "embed_tokens.weight", "lm_head.weight"],
        tags.ADAMW_NO_DECAY: ["query"],
        tags.ATTNRES: [],
    }


def test_untagged_parameter_is_named():
    model = Toy()
    model.extra = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="'extra'"):
        route_parameters(model)


def test_groups_and_decay():
    model = Toy()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt.muon, Muon)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["muon", "adamw", "adamw_no_decay"]
    assert groups["muon"]["weight_decay"] == 0.1
    assert groups["adamw"]["weight_decay"] == 0.1
    assert groups["adamw_no_decay"]["weight_decay"] == 0.0
    assert same(groups["adamw_no_decay"]["params"], [model.query])
    assert opt.adamw.param_groups[-1] is groups["adamw_no_decay"]
    assert opt.group_sizes() == {"muon": (2, 64 + 128), "adamw": (3, 88 + 8 + 88), "adamw_no_decay": (1, 8)}


def test_step_routes_updates():
    torch.manual_seed(0)
    model = Toy()
    proj0 = model.proj.weight.detach().clone()
    opt = build_optimizer(model, lr=1e-2, ns_dtype=torch.float32)
    loss_fn(model, batches(1)[0]).backward()
    grad = model.proj.weight.grad.clone()
    opt.step()
    # The hidden matrix moved exactly as a standalone Muon would move it.
    ref = nn.Parameter(proj0.clone())
    ref.grad = grad
    Muon([ref], lr=1e-2, weight_decay=0.1, ns_dtype=torch.float32).step()
    torch.testing.assert_close(model.proj.weight.detach(), ref.detach(), rtol=0, atol=0)
    assert set(opt.last_update_rms) == {"proj.weight", "experts"}
    assert torch.equal(model.frozen, torch.ones(3))


def test_scheduler_drives_every_group():
    model = Toy()
    opt = build_optimizer(model, lr=1e-2)
    sched = build_scheduler(opt, "wsd", total_steps=10, warmup_steps=4)
    train(model, opt, sched, batches(2))
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([1e-2 * 3 / 4] * 3)
    assert len(opt.optimizers["muon"].param_groups) == 1  # the inner groups are the same dicts
    assert opt.optimizers["muon"].param_groups[0]["lr"] == lrs[0]


def test_attnres_reads_get_their_own_lr_through_the_schedule():
    """`attnres` parameters: AdamW, decay 0, LR × read_lr_mult; the schedule keeps the ratio,
    and an update moves them by lr·mult (Adam's first step is ±lr per element)."""
    model = Toy()
    tags.set_group(model.query, tags.ATTNRES)
    opt = build_optimizer(model, lr=1e-2, read_lr_mult=0.1)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == ["muon", "adamw", "attnres"]
    assert groups["attnres"]["weight_decay"] == 0.0 and same(groups["attnres"]["params"], [model.query])
    assert groups["attnres"]["lr"] == pytest.approx(1e-3) and groups["adamw"]["lr"] == 1e-2
    sched = build_scheduler(opt, "wsd", total_steps=10, warmup_steps=4)
    q0 = model.query.detach().clone()
    train(model, opt, sched, batches(1))
    step = (model.query.detach() - q0).abs()
    assert torch.allclose(step[step > 0], torch.tensor(1e-2 * 0.1 / 4), rtol=1e-3)  # warmup 1/4
    train(model, opt, sched, batches(1))
    assert groups["attnres"]["lr"] == pytest.approx(0.1 * groups["adamw"]["lr"])
    with pytest.raises(ValueError, match="read_lr_mult"):
        build_optimizer(model, lr=1e-2, read_lr_mult=0.0)


def test_empty_muon_group():
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11, bias=False))
    for p in model.parameters():
        tags.set_group(p, tags.ADAMW)
    opt = build_optimizer(model, lr=1e-2)
    assert list(opt.optimizers) == ["adamw"] and opt.muon is None and opt.last_update_rms == {}
    sched = build_scheduler(opt, total_steps=10)
    train(model, opt, sched, batches(2))


def test_adamw_baseline_optimizer():
    model = Toy()
    opt = build_optimizer(model, lr=1e-2, optimizer="adamw")
    assert list(opt.optimizers) == ["adamw"]
    groups = {g["name"]: g for g in opt.param_groups}
    assert same(groups["adamw_matrices"]["params"], [model.experts, model.proj.weight])
    assert groups["adamw_matrices"]["weight_decay"] == 0.1
    assert groups["adamw_no_decay"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="muon"):
        build_optimizer(model, lr=1e-2, optimizer="sgd")


@pytest.mark.skipif(not torch_muon_available(), reason="needs torch.optim.Muon (torch >= 2.9)")
def test_torch_impl_keeps_experts_on_ours():
    model = Toy()
    opt = build_optimizer(model, lr=1e-2, muon_impl="torch")
    assert isinstance(opt.optimizers["muon_torch"], torch.optim.Muon)
    assert same(opt.optimizers["muon_torch"].param_groups[0]["params"], [model.proj.weight])
    assert same(opt.optimizers["muon"].param_groups[0]["params"], [model.experts])


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(ns_dtype=torch.float32), dict(optimizer="adamw"), dict(muon_impl="torch")],
    ids=["muon", "muon_fp32_ns", "adamw", "torch_muon"],
)
def test_resume_is_bitwise(kw):
    if kw.get("muon_impl") == "torch" and not torch_muon_available():
        pytest.skip("needs torch.optim.Muon")
    data = batches(8)

    def make():
        torch.manual_seed(0)
        model = Toy()
        opt = build_optimizer(model, lr=1e-2, **kw)
        return model, opt, build_scheduler(opt, "wsd", total_steps=8, warmup_steps=2, decay_frac=0.5)

    model_a, opt_a, sched_a = make()
    train(model_a, opt_a, sched_a, data)

    model_b, opt_b, sched_b = make()
    train(model_b, opt_b, sched_b, data[:3])
    saved = _roundtrip(
        {"model": model_b.state_dict(), "opt": opt_b.state_dict(), "sched": sched_b.state_dict()}
    )
    model_c, opt_c, sched_c = make()
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    sched_c.load_state_dict(saved["sched"])
    train(model_c, opt_c, sched_c, data[3:])

    for (name, a), c in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(a, c), name
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_c.param_groups]


def test_load_rejects_other_layout():
    opt_muon = build_optimizer(Toy(), lr=1e-2)
    opt_adamw = build_optimizer(Toy(), lr=1e-2, optimizer="adamw")
    with pytest.raises(ValueError, match="inner optimizers"):
        opt_adamw.load_state_dict(opt_muon.state_dict())


def test_hybrid_is_an_optimizer_for_lambdalr():
    opt = build_optimizer(Toy(), lr=1e-2)
    assert isinstance(opt, HybridOptimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    assert sched.get_last_lr() == pytest.approx([5e-3] * 3)
