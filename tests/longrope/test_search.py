"""`phi3_jax.longrope.factors` and `evolution`: the seeds are their papers' formulas, every
candidate keeps the monotone constraint and the bounds, the search is deterministic for a seed,
and a search stopped and resumed ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from phi3_jax.longrope import evolution
from phi3_jax.longrope import factors as factors_lib
from phi3_jax.model import rope

HEAD_DIM, THETA, ORIGINAL, SCALE = 32, 10000.0, 256, 8.0


def test_ntk_factors_are_the_enlarged_base():
    # NTK-aware: inv_freq of base theta * s^(d/(d-2)) without factors equals the factors on theta.
    ntk = factors_lib.ntk_aware(HEAD_DIM, SCALE)
    enlarged = rope.inverse_frequencies(HEAD_DIM, THETA * SCALE ** (HEAD_DIM / (HEAD_DIM - 2)))
    np.testing.assert_allclose(rope.inverse_frequencies(HEAD_DIM, THETA, ntk), enlarged, rtol=1e-5)
    assert ntk[0] == 1.0 and math.isclose(ntk[-1], SCALE)


def test_pi_and_yarn_factors():
    np.testing.assert_array_equal(factors_lib.position_interpolation(HEAD_DIM, SCALE), SCALE)
    yarn = factors_lib.yarn(HEAD_DIM, SCALE, THETA, ORIGINAL)
    turns = [ORIGINAL / (2 * math.pi * THETA ** (2 * i / HEAD_DIM)) for i in range(HEAD_DIM // 2)]
    for i, r in enumerate(turns):
        if r > factors_lib.YARN_BETA:  # fast pairs keep their frequency
            assert yarn[i] == 1.0
        elif r < factors_lib.YARN_ALPHA:  # slow pairs are interpolated by s
            assert math.isclose(yarn[i], SCALE)
        else:  # the ramp: frequency (1 - g) theta / s + g theta
            g = (r - 1) / 31
            assert math.isclose(1 / yarn[i], (1 - g) / SCALE + g)
    assert {1.0, SCALE} <= set(np.round(yarn, 9)) and factors_lib.is_monotone(yarn)


def _fitness(calls: list | None = None, fail_after: int | None = None):
    target = np.geomspace(1.0, 6.0, HEAD_DIM // 2)

    def fitness(f: np.ndarray) -> float:
        if calls is not None:
            calls.append(f.copy())
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt  # a search killed mid-generation
        return 1.0 + float(np.mean((np.log(f) - np.log(target)) ** 2))

    return fitness


SETTINGS = evolution.Settings(population=12, generations=4, mutations=4, crossovers=4, seed=3)


def _search(tmp, settings=SETTINGS, fitness=None, log=None):
    seeds = factors_lib.seeds(HEAD_DIM, SCALE, THETA, ORIGINAL)
    low, high = factors_lib.bounds(SCALE)
    return evolution.search(
        fitness or _fitness(), seeds, settings, str(tmp), low, high, log or (lambda _: None)
    )


def test_search_keeps_constraints_and_elitism(tmp_path):
    calls = []
    lines = []
    state = _search(tmp_path, fitness=_fitness(calls), log=lines.append)
    low, high = factors_lib.bounds(SCALE)
    for f in calls:
        assert factors_lib.is_monotone(f) and f.min() >= low and f.max() <= high
    # Nothing is scored twice; the best never gets worse; seeds are in generation 0.
    assert len({tuple(f) for f in calls}) == len(calls) == len(state.scored)
    assert all(b <= a for a, b in zip(state.best, state.best[1:], strict=False))
    assert state.best[-1] < state.best[0]  # the search improves on the best seed
    assert len(state.population) == SETTINGS.population and state.generation == 4
    assert len(lines) == 5 and "generation 4/4 | best ppl" in lines[-1] and "ETA" in lines[-1]
    # Grid: every mutated value is k / 100.
    for f in calls[3:]:
        seeds = factors_lib.seeds(HEAD_DIM, SCALE, THETA, ORIGINAL).values()
        off_grid = [v for v in f if abs(v * 100 - round(v * 100)) > 1e-9]
        assert all(any(v in s for s in seeds) for v in off_grid)


def test_search_is_deterministic_and_resumes_bitwise(tmp_path):
    whole = _search(tmp_path / "whole")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path / "cut", fitness=_fitness(calls, fail_after=22))
    done = sorted(os.listdir(tmp_path / "cut" / evolution.GENERATIONS_DIR))
    assert done == ["0000", "0001"]  # killed during generation 2
    resumed = _search(tmp_path / "cut")
    for g in range(5):
        name = os.path.join(evolution.GENERATIONS_DIR, f"{g:04d}", evolution.STATE_FILE)
        a = (tmp_path / "whole" / name).read_bytes()
        assert a == (tmp_path / "cut" / name).read_bytes()
    assert resumed.best == whole.best
    other = _search(tmp_path / "other", dataclass_replace(SETTINGS, seed=4))
    assert other.best != whole.best  # the seed matters


def dataclass_replace(settings, **changes):
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_resume_with_other_settings_is_refused(tmp_path):
    _search(tmp_path, dataclass_replace(SETTINGS, generations=1))
    longer = _search(tmp_path, dataclass_replace(SETTINGS, generations=2))  # may search further
    assert longer.generation == 2
    with pytest.raises(evolution.SearchError, match="saved with mutations=4, resumed with "):
        _search(tmp_path, dataclass_replace(SETTINGS, mutations=3, generations=3))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(population=2), "population=2: must hold the 3 seeds"),
        (dict(population=8, mutations=4, crossovers=3), r"\(the parents\) must be at least 2"),
        (dict(mutation_prob=0.0), r"mutation_prob=0.0: must lie in \(0, 1\]"),
    ],
)
def test_bad_settings(changes, message):
    with pytest.raises(evolution.SearchError, match=message):
        dataclass_replace(SETTINGS, **changes).validate(3)
