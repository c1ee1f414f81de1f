"""The Chinchilla-form scaling law L(N, D) = E + A / N^alpha + B / D^beta: fit, uncertainty,
predictions and the compute-optimal split of a FLOP budget.

The fit is Hoffmann et al.'s (2022, arXiv:2203.15556, appendix D.2): the log of the law,
LSE(a - alpha log N, b - beta log D, e) with A = exp(a), B = exp(b), E = exp(e), fitted to the
log losses under a Huber loss (delta 1e-3), from a grid of starting points, the best kept
(scipy.optimize.least_squares). Its uncertainty is a bootstrap over the runs (resampled with
replacement, refitted from the best fit): the spread of each parameter and prediction. Training
compute is C = 6 N D, so the optimum of L under a budget C is (Hoffmann et al. eq. 4)
N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = C / (6 N_opt), G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import optimize, special

NAMES = ("E", "A", "alpha", "B", "beta")
HUBER_DELTA = 1e-3
# Starting points of (e, a, alpha, b, beta): a coarser grid than Hoffmann et al.'s.
GRID = tuple(itertools.product((0.0, 1.0), (2.0, 8.0), (0.2, 0.6), (2.0, 8.0), (0.2, 0.6)))
# e, a, b in the log domain; the exponents positive and below 2.
LOWER = (-5.0, -10.0, 0.0, -10.0, 0.0)
UPPER = (5.0, 40.0, 2.0, 40.0, 2.0)


class FitError(ValueError):
    """Too few runs, or runs that do not constrain both N and D."""


def law(params: dict[str, float], n, d):
    """L(N, D) of the fitted parameters."""
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return params["E"] + params["A"] / n ** params["alpha"] + params["B"] / d ** params["beta"]


def _log_law(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    e, a, alpha, b, beta = x
    return special.logsumexp(
        np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0
    )


def _fit_log(log_n, log_d, log_loss, starts) -> np.ndarray:
    best = None
    for x0 in starts:
        result = optimize.least_squares(
            lambda x: _log_law(x, log_n, log_d) - log_loss,
            np.clip(x0, LOWER, UPPER),
            bounds=(LOWER, UPPER),
            loss="huber",
            f_scale=HUBER_DELTA,
        )
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def _params(x: np.ndarray) -> dict[str, float]:
    e, a, alpha, b, beta = x
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": float(alpha),
            "B": float(np.exp(b)), "beta": float(beta)}  # fmt: skip


@dataclasses.dataclass
class Fit:
    """The best fit, its bootstrap refits, and the residuals of the log losses."""

    params: dict[str, float]
    bootstrap: list[dict[str, float]]
    rms_log_residual: float
    points: int

    def spread(self, values) -> dict[str, float]:
        """Standard deviation and 5th-95th percentiles of a bootstrap quantity."""
        values = np.asarray(values, np.float64)
        return {
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "p05": float(np.percentile(values, 5)),
            "p95": float(np.percentile(values, 95)),
        }

    def summary(self) -> dict[str, dict[str, float]]:
        """Each parameter: its fitted value and its bootstrap spread."""
        return {
            k: {"value": self.params[k]} | self.spread([b[k] for b in self.bootstrap])
            for k in NAMES
        }

    def predict(self, n: float, d: float) -> dict[str, float]:
        """The loss at (N, D), with the bootstrap spread of the prediction."""
        return {"loss": float(law(self.params, n, d))} | self.spread(
            [float(law(b, n, d)) for b in self.bootstrap]
        )


def fit(n, d, loss, *, bootstrap: int = 200, seed: int = 0) -> Fit:
    """Fits L(N, D) to the runs' (parameters, tokens, final loss); bootstrap refits for the
    uncertainty. Needs more runs than the law's 5 parameters, and two values each of N and D."""
    n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
    if len(loss) <= len(NAMES):
        raise FitError(f"{len(loss)} runs: the law has {len(NAMES)} parameters, need more runs")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise FitError("the runs need at least two model sizes and two token budgets")
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    best = _fit_log(log_n, log_d, log_loss, GRID)
    rng = np.random.default_rng(seed)
    refits = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(loss), len(loss))
        if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
            continue  # This resample cannot tell N from D apart.
        refits.append(_params(_fit_log(log_n[idx], log_d[idx], log_loss[idx], [best])))
    residual = _log_law(best, log_n, log_d) - log_loss
    return Fit(_params(best), refits, float(np.sqrt(np.mean(residual**2))), len(loss))


def compute_optimal(params: dict[str, float], flops: float) -> tuple[float, float]:
    """(N_opt, D_opt) minimising the law under C = 6 N D = flops."""
    alpha, beta = params["alpha"], params["beta"]
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
    n_opt = g * (flops / 6.0) ** (beta / (alpha + beta))
    return n_opt, flops / (6.0 * n_opt)
