"""`python -m phi3_jax.longrope search`: LongRoPE's factor search for a run or params checkpoint.

  python -m phi3_jax.longrope search --workdir=RUN --target_length=L --data=GLOB[,GLOB]
      [--population=64 --generations=40 --mutations=16 --crossovers=16 --samples=5 --seed=0]
      [--documents=whole|joined --held_out_fraction=F --rows=R/N --original_length=N]
      [--out=DIR]

A target longer than the original window (default: the model's
original_max_position_embeddings) searches the long factors; a target within it re-searches the
short factors of a model already extended (LongRoPE's short-window search, seeded with no
rescaling as well). Fitness is the perplexity of `samples` rows of the target length from the
held-out documents of --data (`fitness.long_rows`; held out by the run's data.eval_fraction unless
--held_out_fraction says otherwise): the first `samples` of rows R, R + N, R + 2N, ... (--rows,
default 0/1), so an evaluation of the result can take the other parts, rows drawn alike from the
same documents. Writes to --out (default RUN/longrope/L<target>):

  generations/GGGG/state.json   the population after each generation (resume: run it again)
  override.json, override.flags the result as config keys (`--flagfile=.../override.flags` on
                                `python -m phi3_jax.train` applies them)
  result.json                   best factors, the seeds' perplexities, best per generation, data
  search.png                    best perplexity against generation, the seeds as lines
"""

from __future__ import annotations

import json
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from phi3_jax import config as config_lib
from phi3_jax import errors, paths, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import data as eval_data
from phi3_jax.longrope import evolution, fitness
from phi3_jax.longrope import factors as factors_lib
from phi3_jax.train import restore

COMMANDS = ("search",)
OVERRIDE_JSON = "override.json"
OVERRIDE_FLAGS = "override.flags"
RESULT_JSON = "result.json"
PLOT_FILE = "search.png"
# The short-window search also starts from no rescaling at all.
IDENTITY = "none"


def _define_flags() -> None:
    flags.DEFINE_string(
        "workdir",
        None,
        "What checkpoint.init_from takes: a run (RUN: its latest step, RUN/checkpoints/STEP) or a "
        "params checkpoint.",
    )
    flags.DEFINE_integer("target_length", None, "Tokens per row the factors are searched for.")
    flags.DEFINE_list("data", None, "Globs of jsonl(.gz|.zst)/parquet text documents.")
    flags.DEFINE_string("text_field", "text", "The documents' text field.")
    flags.DEFINE_float(
        "held_out_fraction",
        None,
        "Keep documents whose content hash falls below it (default: the run's "
        "data.eval_fraction, the documents its training never saw; 0: all of --data).",
    )
    flags.DEFINE_enum("documents", fitness.WHOLE, fitness.DOCUMENT_MODES, "Rows from.")
    flags.DEFINE_integer("samples", 5, "Rows of target_length tokens scored per candidate.")
    flags.DEFINE_string(
        "rows", "0/1", "R/N: score rows i with i % N == R (the others are left for evaluation)."
    )
    flags.DEFINE_integer("original_length", None, "Default: original_max_position_embeddings.")
    flags.DEFINE_integer("population", 64, "Candidates per generation.")
    flags.DEFINE_integer("generations", 40, "Generations after the first.")
    flags.DEFINE_integer("mutations", 16, "Mutants per generation.")
    flags.DEFINE_integer("crossovers", 16, "Crossover children per generation.")
    flags.DEFINE_integer("seed", 0, "Seeds every random choice of the search.")
    flags.DEFINE_string("out", None, "Output directory (default WORKDIR/longrope/L<target>).")


class Problem:
    """What a search scores: the extended config, the candidate's role, the fitness, seeds and
    bounds. Built by `prepare`, used by the CLI and the demo."""

    def __init__(self, config, which, scorer, seeds, low, high, data_info):
        self.config, self.which, self.scorer = config, which, scorer
        self.seeds, self.low, self.high, self.data_info = seeds, low, high, data_info


def read_documents(globs: list[str], field: str = "text") -> list[str]:
    """The texts of every file the globs match, in sorted path order; a glob matching nothing is
    a FileNotFoundError naming it."""
    texts = []
    for pattern in globs:
        files = paths.glob(pattern) if paths.has_magic(pattern) else [pattern]
        if not files:
            raise FileNotFoundError(f"--data={pattern}: matches no file")
        for file in files:
            texts += eval_data.read_texts(file, field)
    return texts


def problem_seeds(
    config: ml_collections.ConfigDict, target_length: int, original_length: int
) -> tuple[str, dict[str, np.ndarray], float]:
    """(which factors, the seeds by name, the extension s they are for). A target beyond the
    original window: the long factors for s = target / original. Within it: the short factors of
    an extended model, for its s = max_position_embeddings / original, plus no rescaling."""
    m = config.model
    head_dim = m.hidden_size // m.num_heads
    if target_length > original_length:
        scale = factors_lib.extension(target_length, original_length)
        return "long", factors_lib.seeds(head_dim, scale, m.rope_theta, original_length), scale
    if m.rope_scaling != "longrope" or m.max_position_embeddings <= original_length:
        raise fitness.FitnessError(
            f"target_length={target_length}: within the original window {original_length}, "
            f"which re-searches the short factors of a LongRoPE model extended beyond it "
            f"(this one: rope_scaling={m.rope_scaling}, max_position_embeddings="
            f"{m.max_position_embeddings})"
        )
    scale = factors_lib.extension(m.max_position_embeddings, original_length)
    seeds = {IDENTITY: np.ones(head_dim // 2)}
    seeds |= factors_lib.seeds(head_dim, scale, m.rope_theta, original_length)
    return "short", seeds, scale


def prepare(
    workdir: str,
    target_length: int,
    data: list[str],
    *,
    samples: int = 5,
    rows: str = "0/1",
    documents: str = fitness.WHOLE,
    held_out_fraction: float | None = None,
    original_length: int | None = None,
    text_field: str = "text",
) -> Problem:
    """Loads the model onto its config's mesh, builds the rows and the compiled fitness."""
    part = fitness.row_part(rows)
    base = params_checkpoint.init_config(workdir)
    original = original_length or base.model.original_max_position_embeddings
    if base.model.rope_scaling == "longrope" and target_length <= original:
        config = ml_collections.ConfigDict(base.to_dict())
    else:
        config = fitness.extended_config(base, target_length, original)
    which, seeds, scale = problem_seeds(config, target_length, original)
    mesh = sharding.make_mesh(config.mesh)
    params = restore.restore_sharded_params(workdir, config, mesh)
    tokenizer = load_tokenizer(config)
    fraction = config.data.eval_fraction if held_out_fraction is None else held_out_fraction
    texts = fitness.held_out(read_documents(data, text_field), fraction)
    bos = tokenizer.bos_id if config.data.add_bos else None
    tokens = fitness.part_rows(
        texts,
        tokenizer.encode,
        target_length,
        samples,
        part,
        bos=bos,
        eos=tokenizer.eos_id,
        mode=documents,
    )
    scorer = fitness.PositionNLL(config, params, tokens, mesh, which)
    low, high = factors_lib.bounds(scale)
    info = {
        "data": list(data),
        "held_out_fraction": fraction,
        "documents": documents,
        "held_out_documents": len(texts),
        "rows": int(tokens.shape[0]),
        "row_part": rows,
        "target_length": target_length,
        "original_length": original,
        "extension": scale,
    }
    return Problem(config, which, scorer, seeds, low, high, info)


def override(config: ml_collections.ConfigDict, which: str, best: np.ndarray) -> dict:
    """The config keys that give the model the searched factors."""
    m = config.model
    long = best if which == "long" else np.asarray(m.rope_long_factor)
    short = best if which == "short" else np.asarray(m.rope_short_factor)
    return {
        "model.rope_scaling": "longrope",
        "model.original_max_position_embeddings": int(m.original_max_position_embeddings),
        "model.max_position_embeddings": int(m.max_position_embeddings),
        "model.rope_long_factor": [float(f) for f in long],
        "model.rope_short_factor": [float(f) for f in short],
    }


def flag_lines(keys: dict) -> str:
    """`--config.KEY=VALUE` lines (an absl flagfile); a list is written as a tuple literal."""

    def value(v):
        return "(" + ",".join(repr(x) for x in v) + ")" if isinstance(v, list) else str(v)

    return "".join(f"--config.{k}={value(v)}\n" for k, v in keys.items())


def plot(path: str, best: list[float], seed_ppl: dict[str, float], title: str) -> None:
    """Best perplexity against generation, each seed's perplexity as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(best)), best, marker="o", label="search: best of generation")
    for (name, ppl), style in zip(seed_ppl.items(), ("--", ":", "-.", (0, (5, 5))), strict=False):
        ax.axhline(ppl, linestyle=style, color="gray", label=f"{name}: {ppl:.3f}")
    ax.set_xlabel("generation")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with paths.path(path).open("wb") as f:
        fig.savefig(f, dpi=120)
    plt.close(fig)


def write_outputs(out: str, problem: Problem, state: evolution.State) -> dict:
    """override.json, override.flags, result.json and search.png; the result."""
    best = state.ranked()[0]
    keys = override(problem.config, problem.which, best.factors)
    seed_ppl = {name: state.scored[evolution.factor_key(f)] for name, f in problem.seeds.items()}
    result = {
        "which": problem.which,
        "best_factors": best.factors.tolist(),
        "best_ppl": best.ppl,
        "best_origin": best.origin,
        "seed_ppl": seed_ppl,
        "seed_factors": {k: v.tolist() for k, v in problem.seeds.items()},
        "best_per_generation": state.best,
        "generation": state.generation,
        "scored": len(state.scored),
        "compiles": problem.scorer.compiles,
        **problem.data_info,
    }
    paths.path(paths.join(out, OVERRIDE_JSON)).write_text(json.dumps(keys, indent=1))
    paths.path(paths.join(out, OVERRIDE_FLAGS)).write_text(flag_lines(keys))
    paths.path(paths.join(out, RESULT_JSON)).write_text(json.dumps(result, indent=1))
    info = problem.data_info
    title = (
        f"LongRoPE {problem.which} factors, {info['original_length']} -> {info['target_length']}"
    )
    plot(paths.join(out, PLOT_FILE), state.best, seed_ppl, title)
    return result


def run_search(problem: Problem, settings: evolution.Settings, out: str, log=print) -> dict:
    """The search to settings.generations (resuming from `out`), its outputs written."""
    state = evolution.search(
        problem.scorer.perplexity, problem.seeds, settings, out, problem.low, problem.high, log
    )
    result = write_outputs(out, problem, state)
    seeds = ", ".join(f"{k} {v:.4f}" for k, v in result["seed_ppl"].items())
    log(f"longrope: best ppl {result['best_ppl']:.4f} ({seeds}); wrote {out}")
    return result


# Bad input: one line on stderr, exit status 1.
INPUT_ERRORS = (
    errors.BadInputError,
    config_lib.ConfigError,
    eval_data.DataError,
    FileNotFoundError,
)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"expected one command of {COMMANDS}, got {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    for name in ("workdir", "target_length", "data"):
        if flags.FLAGS[name].value is None:
            sys.exit(f"phi3_jax.longrope: --{name} is required")
    f = flags.FLAGS
    settings = evolution.Settings(
        population=f.population,
        generations=f.generations,
        mutations=f.mutations,
        crossovers=f.crossovers,
        seed=f.seed,
    )
    out = f.out or paths.join(f.workdir, "longrope", f"L{f.target_length}")
    try:
        settings.validate(3)
        problem = prepare(
            f.workdir,
            f.target_length,
            f.data,
            samples=f.samples,
            rows=f.rows,
            documents=f.documents,
            held_out_fraction=f.held_out_fraction,
            original_length=f.original_length,
            text_field=f.text_field,
        )
        log = print
        log(
            f"longrope: {problem.which} factors for {problem.data_info['target_length']} tokens "
            f"({problem.data_info['extension']:g}x), {problem.data_info['rows']} rows on "
            f"{jax.device_count()} devices"
        )
        run_search(problem, settings, out, log)
    except INPUT_ERRORS as error:
        sys.exit(f"phi3_jax.longrope: {error}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
