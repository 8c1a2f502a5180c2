"""Power-law fits and the compute advantage: recovery, the paper's published numbers ([AR] §5.1,
docs/TARGETS.md#a2-scaling-law-fits-and-compute-advantage) and `attnres scaling advantage`."""

import numpy as np
import pytest

from attnres.cli import main
from attnres.experiments import fit

PAPER = {"baseline": (1.891, 0.057), "block": (1.870, 0.058), "full": (1.865, 0.057)}


def test_recovers_noiseless_power_law():
    C = np.geomspace(1e-3, 10.0, 6)
    A, alpha = fit.fit_power_law(C, 2.3 * C ** -0.05)
    assert A == pytest.approx(2.3, rel=1e-12) and alpha == pytest.approx(0.05, rel=1e-12)


def test_recovers_noisy_power_law():
    rng = np.random.default_rng(0)
    C = np.geomspace(1e-6, 1e-2, 12)
    L = 1.9 * C ** -0.06 * np.exp(rng.normal(0.0, 0.003, size=C.shape))
    A, alpha = fit.fit_power_law(C, L)
    assert alpha == pytest.approx(0.06, abs=0.003) and A == pytest.approx(1.9, rel=0.05)


def test_paper_coefficients_give_published_numbers():
    assert round(fit.loss_at(*PAPER["baseline"], 5.6), 4) == 1.7141
    assert round(fit.loss_at(*PAPER["block"], 5.6), 4) == 1.6922
    assert round(fit.loss_at(*PAPER["full"], 5.6), 4) == 1.6906
    for arm, compute, adv in (("block", 7.02, 1.254), ("full", 7.14, 1.275)):
        loss = fit.loss_at(*PAPER[arm], 5.6)
        assert round(fit.compute_for_loss(*PAPER["baseline"], loss), 2) == compute
        assert round(fit.advantage(PAPER["baseline"], PAPER[arm], 5.6), 3) == adv


def test_compute_for_loss_inverts_loss_at_and_units():
    A, alpha = 1.891, 0.057
    assert fit.compute_for_loss(A, alpha, fit.loss_at(A, alpha, 3.7)) == pytest.approx(3.7, rel=1e-12)
    assert fit.advantage((A, alpha), (A, alpha), 2.0) == pytest.approx(1.0)
    assert fit.flops_to_pfs_days(8.64e19) == 1.0


def test_fit_rejects_degenerate_input():
    with pytest.raises(ValueError, match="two distinct"):
        fit.fit_power_law([1.0, 1.0], [2.0, 2.1])
    with pytest.raises(ValueError, match="positive"):
        fit.fit_power_law([1.0, 2.0], [2.0, -1.0])


def _seed_points(A, alpha, noise, seeds=(0, 1, 2)):
    rng = np.random.default_rng(1)
    C = [1e-6, 1e-5, 1e-4, 1e-3]
    return {s: [(c, A * c ** -alpha + noise * rng.normal()) for c in C] for s in seeds}


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    base = _seed_points(3.0, 0.05, 0.01)
    var = _seed_points(2.95, 0.05, 0.01)
    a = fit.bootstrap_advantage(base, var, C0=1e-3, n_boot=300)
    b = fit.bootstrap_advantage(base, var, C0=1e-3, n_boot=300)
    assert a == b and a["n_seeds"] == 3
    assert a["low"] <= a["estimate"] <= a["high"]
    means = fit.advantage(fit.fit_power_law(*fit.mean_points(base)),
                          fit.fit_power_law(*fit.mean_points(var)), 1e-3)
    assert a["estimate"] == pytest.approx(means)


def test_bootstrap_without_seed_noise_collapses():
    base = _seed_points(3.0, 0.05, 0.0)
    var = _seed_points(2.9, 0.05, 0.0)
    r = fit.bootstrap_advantage(base, var, C0=1e-3, n_boot=50)
    assert r["low"] == pytest.approx(r["estimate"]) == pytest.approx(r["high"])
    with pytest.raises(ValueError, match="share no seed"):
        fit.bootstrap_advantage({0: base[0]}, {1: var[1]}, C0=1e-3)


def test_cli_advantage_prints_paper_numbers(capsys):
    code = main(["scaling", "advantage", "--baseline", "1.891,0.057", "--variant", "block=1.870,0.058",
                 "--variant", "full=1.865,0.057", "--at", "5.6"])
    assert code == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "1.7141" in lines[0]
    block = next(x for x in lines if x.startswith("block"))
    full = next(x for x in lines if x.startswith("full"))
    assert "1.6922" in block and "C = 7.02" in block and "1.25×" in block and "(1.254)" in block
    assert "1.6906" in full and "C = 7.14" in full and "(1.275)" in full


def test_cli_advantage_rejects_bad_coefficients(capsys):
    code = main(["scaling", "advantage", "--baseline", "1.891", "--variant", "1.870,0.058", "--at", "5.6"])
    assert code == 2
    assert "A,ALPHA" in capsys.readouterr().err
