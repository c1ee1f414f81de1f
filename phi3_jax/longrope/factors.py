"""Rescale factors of the rotary dimension pairs: the three seeds of the search and its grid.

A factor λ_i divides pair i's frequency, inv_freq_i = 1 / (λ_i · θ^(2i/d)) (what LongRoPE's
`rope_long_factor` means), for i = 0 .. d/2 - 1 from the fastest-turning pair to the slowest.
For a context extension s = target length / original length:

- Position Interpolation (Chen et al. 2023, arXiv 2306.15595): every position divided by s,
  λ_i = s.
- NTK-aware interpolation (bloc97, 2023; YaRN §3.1): the base θ grows to θ · s^(d/(d-2)), so
  λ_i = s^(2i/(d-2)): 1 for the fastest pair, s for the slowest.
- YaRN's "NTK-by-parts" (Peng et al. 2023, arXiv 2309.00071 §3.2): with r_i = L / wavelength_i
  (how many turns pair i makes over the original length L, wavelength_i = 2π θ^(2i/d)) and the
  ramp γ(r) = 0 below α, 1 above β, linear between, the frequency is (1 - γ) θ_i / s + γ θ_i,
  i.e. λ_i = 1 / ((1 - γ_i) / s + γ_i); α = 1, β = 32 (the paper's values for LLaMA).

Every seed is non-decreasing in i, which is the search's constraint (λ_i ≤ λ_{i+1}). The search
moves on a grid of `GRID_STEP` within [1, MAX_FACTOR_RATIO · s] (LongRoPE §4.1: 1.0 to 1.25 s in
steps of 0.01).
"""

from __future__ import annotations

import math

import numpy as np

GRID_STEP = 0.01
MAX_FACTOR_RATIO = 1.25
YARN_ALPHA = 1.0
YARN_BETA = 32.0
SEEDS = ("pi", "ntk", "yarn")


def extension(target_length: int, original_length: int) -> float:
    """s = target / original; a target no longer than the original is a ValueError."""
    if target_length <= original_length:
        raise ValueError(
            f"target_length={target_length}: must exceed the original context {original_length}"
        )
    return target_length / original_length


def position_interpolation(head_dim: int, scale: float) -> np.ndarray:
    """λ_i = s for every pair."""
    return np.full(head_dim // 2, scale, np.float64)


def ntk_aware(head_dim: int, scale: float) -> np.ndarray:
    """λ_i = s^(2i / (d - 2)): the base θ · s^(d / (d - 2)) written as per-pair factors."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    return scale ** (2.0 * i / (head_dim - 2))


def yarn(
    head_dim: int,
    scale: float,
    theta: float,
    original_length: int,
    alpha: float = YARN_ALPHA,
    beta: float = YARN_BETA,
) -> np.ndarray:
    """YaRN's NTK-by-parts factors: pairs turning more than β times over the original length
    keep their frequency, those turning fewer than α times are interpolated by s, a ramp between."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    wavelength = 2.0 * math.pi * theta ** (2.0 * i / head_dim)
    turns = original_length / wavelength
    ramp = np.clip((turns - alpha) / (beta - alpha), 0.0, 1.0)
    return 1.0 / ((1.0 - ramp) / scale + ramp)


def seeds(head_dim: int, scale: float, theta: float, original_length: int) -> dict[str, np.ndarray]:
    """The three seeds of the search, by name (SEEDS order)."""
    return {
        "pi": position_interpolation(head_dim, scale),
        "ntk": ntk_aware(head_dim, scale),
        "yarn": yarn(head_dim, scale, theta, original_length),
    }


def is_monotone(factors: np.ndarray) -> bool:
    """λ_i ≤ λ_{i+1} for every i."""
    return bool(np.all(np.diff(factors) >= 0))


def grid_between(low: float, high: float) -> np.ndarray:
    """The grid values k · GRID_STEP (k an integer) in [low, high], ascending (empty when the
    interval holds none). Values are k / (1 / GRID_STEP), so the same k is the same float."""
    per_unit = round(1.0 / GRID_STEP)
    first = math.ceil(round(low * per_unit, 6))
    last = math.floor(round(high * per_unit, 6))
    return np.arange(first, last + 1, dtype=np.int64) / per_unit


def bounds(scale: float) -> tuple[float, float]:
    """The search range of every factor: [1, 1.25 s]."""
    return 1.0, MAX_FACTOR_RATIO * scale
