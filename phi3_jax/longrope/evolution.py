"""The evolutionary search of LongRoPE (arXiv 2402.13753 §3.2, Algorithm 1), over one rescale
factor per rotary dimension pair under the monotone constraint λ_i ≤ λ_{i+1}.

Generation 0 is the seeds (PI, NTK-aware, YaRN; `factors.seeds`) and mutations of them, round
robin, up to `population` candidates. Each later generation keeps the `population - mutations -
crossovers` best of the one before (the parents) and adds `mutations` mutants and `crossovers`
children of random parents. A mutation re-draws each pair's factor with probability
`mutation_prob` (at least one), in random order, uniformly on the grid between its neighbours'
current values (so the result stays monotone); a crossover takes each pair from the second
parent with probability `crossover_prob` and keeps the child only if it is monotone, falling back
to a mutation of the first parent after `max_tries`. A candidate already scored is not drawn
again when a new one can be found in `max_tries` draws, and is never scored twice.

Everything random comes from one numpy PCG64 generator seeded by `seed`, whose state is saved
with the population after every generation (DIR/generations/GGGG/state.json, each written as an
atomic directory), so a resumed search continues bit for bit as if never stopped. The fitness
is any function factors -> perplexity (lower is better); `fitness.py` gives the model's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np

from phi3_jax import errors, paths
from phi3_jax.longrope import factors as factors_lib

GENERATIONS_DIR = "generations"
STATE_FILE = "state.json"
Fitness = Callable[[np.ndarray], float]
Log = Callable[[str], None]


class SearchError(errors.BadInputError):
    """Bad search settings, or a resume whose saved settings differ; the message names them."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The search's hyperparameters (the paper's defaults) and its seed."""

    population: int = 64
    generations: int = 40
    mutations: int = 16
    crossovers: int = 16
    seed: int = 0
    mutation_prob: float = 0.3
    crossover_prob: float = 0.5
    max_tries: int = 64

    @property
    def parents(self) -> int:
        """Candidates kept from one generation to the next (the paper's top-k)."""
        return self.population - self.mutations - self.crossovers

    def validate(self, seed_count: int) -> None:
        for key in ("population", "max_tries"):
            if getattr(self, key) < 1:
                raise SearchError(f"{key}={getattr(self, key)}: must be at least 1")
        for key in ("generations", "mutations", "crossovers"):
            if getattr(self, key) < 0:
                raise SearchError(f"{key}={getattr(self, key)}: must be at least 0")
        if self.population < seed_count:
            raise SearchError(
                f"population={self.population}: must hold the {seed_count} seeds at least"
            )
        if self.parents < (2 if self.crossovers else 1):
            raise SearchError(
                f"population={self.population}, mutations={self.mutations}, "
                f"crossovers={self.crossovers}: population - mutations - crossovers (the parents) "
                f"must be at least {2 if self.crossovers else 1}"
            )
        for key in ("mutation_prob", "crossover_prob"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise SearchError(f"{key}={getattr(self, key)}: must lie in (0, 1]")


@dataclasses.dataclass
class Candidate:
    """One factor array, how it was made, and its perplexity (None until scored)."""

    factors: np.ndarray
    origin: str
    ppl: float | None = None


@dataclasses.dataclass
class State:
    """The search after a generation: its population (scored), every perplexity computed so
    far by factor array, the best perplexity of each generation, and the generator's state."""

    generation: int
    population: list[Candidate]
    scored: dict[tuple[float, ...], float]
    best: list[float]
    rng: np.random.Generator

    def ranked(self) -> list[Candidate]:
        """The population, best first (ties keep population order)."""
        return sorted(self.population, key=lambda c: c.ppl)


def factor_key(values: np.ndarray) -> tuple[float, ...]:
    """A factor array as the key of `State.scored`."""
    return tuple(float(v) for v in values)


def mutate(
    parent: np.ndarray, rng: np.random.Generator, settings: Settings, low: float, high: float, seen
) -> np.ndarray:
    """A monotone mutant of a monotone parent, not in `seen` if one is found in max_tries."""
    n = parent.shape[0]
    child = parent
    for _ in range(settings.max_tries):
        child = parent.copy()
        chosen = rng.random(n) < settings.mutation_prob
        if not chosen.any():
            chosen[rng.integers(n)] = True
        for i in rng.permutation(n):
            if not chosen[i]:
                continue
            below = child[i - 1] if i > 0 else low
            above = child[i + 1] if i < n - 1 else high
            values = factors_lib.grid_between(below, above)
            if values.size:
                child[i] = values[rng.integers(values.size)]
        if factor_key(child) not in seen:
            break
    return child


def crossover(
    first: np.ndarray, second: np.ndarray, rng: np.random.Generator, settings: Settings, seen
) -> np.ndarray | None:
    """A monotone child taking each pair from `second` with crossover_prob, else from
    `first`, unseen and unlike both parents; None when max_tries draws find none."""
    for _ in range(settings.max_tries):
        child = np.where(rng.random(first.shape[0]) < settings.crossover_prob, second, first)
        if factors_lib.is_monotone(child) and factor_key(child) not in seen:
            return child
    return None


def _score(population: list[Candidate], scored: dict, fitness: Fitness) -> int:
    """Fills in each candidate's perplexity, computing only those never scored; how many were."""
    computed = 0
    for candidate in population:
        key = factor_key(candidate.factors)
        if key not in scored:
            scored[key] = float(fitness(candidate.factors))
            computed += 1
        candidate.ppl = scored[key]
    return computed


def initial(
    seeds: dict[str, np.ndarray], settings: Settings, low: float, high: float, fitness: Fitness
) -> tuple[State, int]:
    """Generation 0, scored: the seeds and their mutations; and how many were scored."""
    rng = np.random.Generator(np.random.PCG64(settings.seed))
    population = [Candidate(np.asarray(f, np.float64), name) for name, f in seeds.items()]
    seen = {factor_key(c.factors) for c in population}
    names = list(seeds)
    while len(population) < settings.population:
        name = names[(len(population) - len(names)) % len(names)]
        child = mutate(population[names.index(name)].factors, rng, settings, low, high, seen)
        seen.add(factor_key(child))
        population.append(Candidate(child, f"{name}:mutation"))
    scored: dict = {}
    computed = _score(population, scored, fitness)
    state = State(0, population, scored, [], rng)
    state.best.append(state.ranked()[0].ppl)
    return state, computed


def next_generation(
    state: State, settings: Settings, low: float, high: float, fitness: Fitness
) -> tuple[State, int]:
    """The generation after `state`, scored; and how many candidates were scored."""
    rng = state.rng
    parents = state.ranked()[: settings.parents]
    population = [Candidate(c.factors, c.origin, c.ppl) for c in parents]
    seen = set(state.scored)
    for _ in range(settings.mutations):
        parent = parents[rng.integers(len(parents))]
        child = mutate(parent.factors, rng, settings, low, high, seen)
        seen.add(factor_key(child))
        population.append(Candidate(child, "mutation"))
    for _ in range(settings.crossovers):
        i, j = sorted(rng.choice(len(parents), 2, replace=False))
        child = crossover(parents[i].factors, parents[j].factors, rng, settings, seen)
        origin = "crossover"
        if child is None:
            child, origin = mutate(parents[i].factors, rng, settings, low, high, seen), "mutation"
        seen.add(factor_key(child))
        population.append(Candidate(child, origin))
    computed = _score(population, state.scored, fitness)
    out = State(state.generation + 1, population, state.scored, state.best, rng)
    out.best = [*state.best, out.ranked()[0].ppl]
    return out, computed


# ----------------------------------------------------------------------------------------------
# Checkpoints: one directory per generation.


def _settings_json(settings: Settings, low: float, high: float) -> dict:
    # `generations` may grow on resume (search further); everything else must match.
    out = dataclasses.asdict(settings) | {"low": low, "high": high}
    del out["generations"]
    return out


def save(directory: str, state: State, settings: Settings, low: float, high: float) -> str:
    """Writes generation `state.generation` atomically; its path."""
    path = paths.join(directory, GENERATIONS_DIR, f"{state.generation:04d}")
    payload = {
        "generation": state.generation,
        "settings": _settings_json(settings, low, high),
        "population": [
            {"factors": c.factors.tolist(), "origin": c.origin, "ppl": c.ppl}
            for c in state.population
        ],
        "scored": [[list(k), v] for k, v in state.scored.items()],
        "best": state.best,
        "rng": state.rng.bit_generator.state,
    }
    with paths.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(payload, f)
    return path


def latest(directory: str) -> str | None:
    """The newest complete generation's directory (atomic writes leave only complete ones; on
    a bucket an upload cut short lacks its state file)."""
    root = paths.path(paths.join(directory, GENERATIONS_DIR))
    if not root.is_dir():
        return None
    done = sorted(d.name for d in root.iterdir() if d.name.isdigit() and (d / STATE_FILE).exists())
    return paths.join(root, done[-1]) if done else None


def load(path: str, settings: Settings, low: float, high: float) -> State:
    """The state saved at `path`; saved settings that differ from these are a SearchError."""
    file = paths.join(path, STATE_FILE)
    payload = json.loads(paths.path(file).read_text())
    want = _settings_json(settings, low, high)
    for key, value in payload["settings"].items():
        if want.get(key) != value:
            raise SearchError(
                f"{file}: saved with {key}={value}, resumed with {key}={want.get(key)}; use "
                f"another output directory, or the same settings"
            )
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = payload["rng"]
    population = [
        Candidate(np.asarray(c["factors"], np.float64), c["origin"], c["ppl"])
        for c in payload["population"]
    ]
    scored = {tuple(k): v for k, v in payload["scored"]}
    return State(payload["generation"], population, scored, list(payload["best"]), rng)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(state: State, total: int, computed: int, seconds: float, eta: float) -> str:
    """One line per generation: best perplexity and its origin, candidates scored, time, ETA."""
    best = state.ranked()[0]
    return (
        f"longrope: generation {state.generation}/{total} | best ppl {best.ppl:.4f} "
        f"({best.origin}) | {computed} scored in {seconds:.1f} s | ETA {_duration(eta)}"
    )


def search(
    fitness: Fitness,
    seeds: dict[str, np.ndarray],
    settings: Settings,
    directory: str,
    low: float,
    high: float,
    log: Log = print,
) -> State:
    """Runs (or resumes, from `directory`'s newest generation) the search to
    `settings.generations`; the final state. Every generation is saved before the next."""
    settings.validate(len(seeds))
    saved = latest(directory)
    if saved is not None:
        state = load(saved, settings, low, high)
        log(f"longrope: resumed at generation {state.generation} from {saved}")
    else:
        start = time.perf_counter()
        state, computed = initial(seeds, settings, low, high, fitness)
        save(directory, state, settings, low, high)
        seconds = time.perf_counter() - start
        per_candidate = seconds / max(computed, 1)
        eta = per_candidate * (settings.mutations + settings.crossovers) * settings.generations
        log(progress_line(state, settings.generations, computed, seconds, eta))
    rates: list[float] = []
    while state.generation < settings.generations:
        start = time.perf_counter()
        state, computed = next_generation(state, settings, low, high, fitness)
        save(directory, state, settings, low, high)
        seconds = time.perf_counter() - start
        rates.append(seconds)
        eta = sum(rates) / len(rates) * (settings.generations - state.generation)
        log(progress_line(state, settings.generations, computed, seconds, eta))
    return state
