"""LR schedules (docs/OPTIM.md#learning-rate-schedules): warmup, plateau, decay shapes, end values,
scheduler state."""

import math

import pytest
import torch

from attnres.optim import (
    build_scheduler,
    constant_multiplier,
    cosine_multiplier,
    default_warmup,
    make_multiplier,
    wsd_multiplier,
)

T, W, R = 100, 10, 0.1
D = 20  # round(0.2 · T)


def test_default_warmup():
    assert default_warmup(1000) == 20
    assert default_warmup(10) == 1
    assert default_warmup(1) == 1


@pytest.mark.parametrize("fn", [wsd_multiplier, cosine_multiplier, constant_multiplier])
def test_warmup(fn):
    assert [fn(t, T, W) for t in range(W)] == pytest.approx([(t + 1) / W for t in range(W)])


@pytest.mark.parametrize("shape", ["cosine", "linear", "sqrt"])
def test_wsd_plateau_and_decay(shape):
    m = [wsd_multiplier(t, T, W, 0.2, R, shape) for t in range(T)]
    assert m[W: T - D] == [1.0] * (T - D - W)
    decay = m[T - D - 1:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly decreasing
    assert m[T - 1] == pytest.approx(R, abs=1e-15)
    assert wsd_multiplier(T + 5, T, W, 0.2, R, shape) == pytest.approx(R, abs=1e-15)


def test_wsd_shape_points():
    # t = T − D + 4 gives p = 5/20 = 0.25.
    t = T - D + 4
    assert wsd_multiplier(t, T, W, 0.2, R, "linear") == pytest.approx(1 - 0.9 * 0.25)
    assert wsd_multiplier(t, T, W, 0.2, R, "sqrt") == pytest.approx(1 - 0.9 * 0.5)
    cos_quarter = R + 0.9 * (1 + math.cos(math.pi / 4)) / 2
    assert wsd_multiplier(t, T, W, 0.2, R, "cosine") == pytest.approx(cos_quarter)
    assert wsd_multiplier(T - D + 9, T, W, 0.2, R, "cosine") == pytest.approx(0.55)  # p = 1/2


def test_cosine_points():
    # p = (t − W + 1)/(T − W) is 1/2 at t = W + 44, 1/3 at t = W + 29 and 1 at t = T − 1.
    assert cosine_multiplier(W + 44, T, W, R) == pytest.approx(0.55)
    assert cosine_multiplier(W + 29, T, W, R) == pytest.approx(R + 0.9 * (1 + math.cos(math.pi / 3)) / 2)
    assert cosine_multiplier(T - 1, T, W, R) == pytest.approx(R, abs=1e-15)
    m = [cosine_multiplier(t, T, W, R) for t in range(W - 1, T)]
    assert all(a > b for a, b in zip(m, m[1:]))


def test_constant():
    assert [constant_multiplier(t, T, W) for t in range(W, T)] == [1.0] * (T - W)


def test_scheduler_follows_multiplier():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2e-3)
    sched = build_scheduler(opt, "wsd", total_steps=T)  # default warmup round(0.02 · 100) = 2
    lrs = []
    for _ in range(T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-3 * wsd_multiplier(t, T, 2) for t in range(T)])
    assert lrs[-1] == pytest.approx(2e-4)


def test_scheduler_state_round_trip():
    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        return opt, build_scheduler(opt, "cosine", total_steps=20, warmup_steps=3)

    opt_a, sched_a = make()
    for _ in range(7):
        opt_a.step()
        sched_a.step()
    opt_b, sched_b = make()
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b.load_state_dict(sched_a.state_dict())
    assert sched_b.state_dict() == sched_a.state_dict()
    for _ in range(10):
        for opt, sched in ((opt_a, sched_a), (opt_b, sched_b)):
            opt.step()
            sched.step()
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
        assert sched_a.get_last_lr() == sched_b.get_last_lr()


def test_bad_arguments():
    with pytest.raises(ValueError, match="wsd.*cosine.*constant"):
        make_multiplier("step", total_steps=10)
    with pytest.raises(ValueError, match="shape"):
        make_multiplier("wsd", total_steps=10, shape="exp")
    with pytest.raises(ValueError, match="exceed"):
        make_multiplier("wsd", total_steps=10, warmup_steps=9)
    with pytest.raises(ValueError, match="total_steps"):
        make_multiplier("cosine", total_steps=0)
