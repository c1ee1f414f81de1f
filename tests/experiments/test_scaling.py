"""The scaling-law fit recovers a known law, and its compute-optimal split is the law's minimum."""

import numpy as np
import pytest
from scipy import optimize

from launch import scaling

# Hoffmann et al. 2022's fitted law (their eq. 10).
CHINCHILLA = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def _synthetic_runs(noise: float, seed: int = 0):
    n, d = np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4))
    n, d = n.ravel(), d.ravel()
    rng = np.random.default_rng(seed)
    return n, d, scaling.law(CHINCHILLA, n, d) * np.exp(rng.normal(0.0, noise, n.shape))


def test_fit_recovers_the_exponents_of_a_known_law():
    # 16 runs with 0.3% multiplicative noise: both exponents within 0.03 of the truth, and the
    # bootstrap's 5-95% interval of each covers it.
    n, d, loss = _synthetic_runs(noise=0.003)
    fit = scaling.fit(n, d, loss, bootstrap=20)
    for key in ("alpha", "beta"):
        assert abs(fit.params[key] - CHINCHILLA[key]) < 0.03, (key, fit.params)
    summary = fit.summary()
    assert summary["alpha"]["p05"] <= CHINCHILLA["alpha"] <= summary["alpha"]["p95"]
    assert abs(fit.params["E"] - CHINCHILLA["E"]) < 0.1
    assert fit.rms_log_residual < 0.006


def test_fit_is_exact_without_noise():
    n, d, loss = _synthetic_runs(noise=0.0)
    fit = scaling.fit(n, d, loss, bootstrap=0)
    assert fit.rms_log_residual < 1e-4
    np.testing.assert_allclose(scaling.law(fit.params, n, d), loss, rtol=1e-4)


def test_compute_optimal_minimises_the_law_under_the_budget():
    flops = 1e21
    n_opt, d_opt = scaling.compute_optimal(CHINCHILLA, flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops)
    # An independent answer: minimise L(N, C / 6N) over log N numerically.
    best = optimize.minimize_scalar(
        lambda log_n: scaling.law(CHINCHILLA, np.exp(log_n), flops / (6 * np.exp(log_n))),
        bounds=(np.log(1e6), np.log(1e13)),
        method="bounded",
        options={"xatol": 1e-9},
    )
    assert n_opt == pytest.approx(np.exp(best.x), rel=1e-3)


def test_too_few_runs_is_an_error():
    with pytest.raises(scaling.FitError, match="5 parameters"):
        scaling.fit([1e6, 1e7, 1e8], [1e9, 1e9, 1e10], [3.0, 2.8, 2.5])
    with pytest.raises(scaling.FitError, match="two token budgets"):
        scaling.fit([1e6, 1e7, 1e8] * 2, [1e9] * 6, [3.0, 2.8, 2.5] * 2)
