"""`make longctx`: LongRoPE end to end on the bundled corpus, on CPU, in tens of minutes.

  python -m launch.longctx --workdir=workdir/longctx --report=docs/longctx

1. `short`: configs/phi3_tiny_longctx.py trained at 128 tokens per row (phase-1 web text, a fifth
   of the documents held out by content hash).
2. `search`: the factor search to 8x (1024 tokens) on `SEARCH_ROWS` rows of held-out text: the
   even rows (`SEARCH_PART`) of those the held-out documents give.
3. The table before any fine-tuning: perplexity at 1x, 2x, 4x and 8x of `EVAL_ROWS` other
   held-out rows (the odd ones, `EVAL_PART`: drawn as the search's are, disjoint from them) with
   plain RoPE, PI, NTK-aware, YaRN and the searched factors, and by position bucket at 8x; the
   check (searched no worse than the best seed at 8x) with the paired per-row differences.
4. `extend`: configs/phi3_tiny_longctx.py:extend from the short run's params
   (checkpoint.init_from, checkpoint.extend_context) with the searched factors (the search's
   override.flags) on rows of 1024 tokens, then the same table for it.
5. `passkey`: the extension run's model trained further on passkey documents alone (the task's
   prompt with other keys, depths and lengths), which shows what retrieval the pipeline and the
   task measure once the model has seen the format.
6. Passkey retrieval of the three models at 256, 512 and 1024 tokens (eval.longctx) as grids.

The corpus's documents are short (few exceed 1024 tokens), so the long rows are documents joined
end to end (`fitness.long_rows` JOINED): the held-out ones for evaluation and search, the training
ones (not held out) as the extension run's shard. Steps already done (a checkpoint, a search's
generations) are not redone; the report (REPORT.md, search.png, ppl.png, passkey_*.png) goes to
--report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

from configs import phi3_tiny_longctx as recipe
from launch import longctx_report as report_lib
from phi3_jax import config as config_lib
from phi3_jax import paths, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import longctx, runner
from phi3_jax.eval.scorer import Scorer
from phi3_jax.longrope import __main__ as cli
from phi3_jax.longrope import evolution, fitness
from phi3_jax.train import restore

DATA = ["data/web/phase1/*.jsonl.zst"]
# The held-out documents give 62 rows of 1024 tokens: the even ones score the search, the odd
# ones the table.
SEARCH_ROWS = EVAL_ROWS = 30
SEARCH_PART, EVAL_PART = "0/2", "1/2"
LENGTHS = tuple(recipe.SHORT_CONTEXT * k for k in (1, 2, 4, 8))
SETTINGS = evolution.Settings(population=32, generations=16, mutations=8, crossovers=8)
PASSKEY = "passkey:256,512,1024"
PASSKEY_TRIALS = 2
# The passkey run: the extension run's model trained further on passkey documents alone.
PASSKEY_DOCS, PASSKEY_SEED, PASSKEY_SHORTEST = 3000, 1, 160
METHODS = ("plain RoPE", "PI", "NTK-aware", "YaRN", "LongRoPE search")
SEED_OF = {"PI": "pi", "NTK-aware": "ntk", "YaRN": "yarn"}
BUCKETS = 8


def train(config_arg: str, workdir: str, extra: list[str]) -> None:
    """`python -m phi3_jax.train` of the recipe (resumes, or does nothing when done)."""
    spec = "configs/phi3_tiny_longctx.py" + (f":{config_arg}" if config_arg else "")
    command = [sys.executable, "-m", "phi3_jax.train", f"--config={spec}", f"--workdir={workdir}"]
    print("$ " + " ".join(command + extra), flush=True)
    subprocess.run(command + extra, check=True)


def long_training_shard(path: str, config, tokens_per_doc: int) -> int:
    """The training documents (those not held out) joined into documents of at least
    `tokens_per_doc` tokens, written as one jsonl shard; how many."""
    if os.path.exists(path):
        return sum(1 for _ in open(path))
    texts = cli.read_documents(DATA)
    held = set(fitness.held_out(texts, config.data.eval_fraction))
    tokenizer = load_tokenizer(config)
    docs, current, count = [], [], 0
    for text in (t for t in texts if t not in held):
        current.append(text)
        count += len(tokenizer.encode(text)) + 2
        if count >= tokens_per_doc:
            docs.append("\n\n".join(current))
            current, count = [], 0
    tmp = path + ".tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    os.replace(tmp, path)
    return len(docs)


def eval_rows(tokenizer, config) -> np.ndarray:
    """EVAL_ROWS rows of the target length, EVAL_PART of the held-out rows (the search has
    SEARCH_PART of the same ones)."""
    texts = fitness.held_out(cli.read_documents(DATA), config.data.eval_fraction)
    bos = tokenizer.bos_id if config.data.add_bos else None
    return fitness.part_rows(
        texts,
        tokenizer.encode,
        LENGTHS[-1],
        EVAL_ROWS,
        fitness.row_part(EVAL_PART),
        bos=bos,
        eos=tokenizer.eos_id,
        mode=fitness.JOINED,
    )


def table(params, rows: np.ndarray, candidates: dict, mesh) -> dict:
    """{method: {"ppl": {length: ppl}, "buckets": [(first, last, ppl)] and "row_nll" (mean NLL
    of each row) at the longest}}: the same tokens cut into rows of each length; `candidates`
    maps a method to (its config, its long factors or None for the config's own). One compile
    per config and length."""
    out = {name: {"ppl": {}} for name in candidates}
    for length in LENGTHS:
        cut = rows.reshape(-1, length)
        scorers: dict[int, fitness.PositionNLL] = {}
        for name, (config, factors) in candidates.items():
            if id(config) not in scorers:
                scorers[id(config)] = fitness.PositionNLL(config, params, cut, mesh)
            nll = scorers[id(config)](factors)
            out[name]["ppl"][length] = math.exp(float(np.mean(nll)))
            if length == LENGTHS[-1]:
                out[name]["buckets"] = fitness.bucket_perplexity(nll, BUCKETS)
                out[name]["row_nll"] = scorers[id(config)].row_nll(factors).tolist()
    return out


def check(before: dict, searched: str, seeds: list[str]) -> dict:
    """The issue's check at 8x on the table's rows: the searched factors' perplexity against
    each seed's, with the mean per-row NLL difference (searched - seed; below 0: searched
    better) and its standard error over the rows (the rows are shared, so the difference is
    paired)."""
    longest = LENGTHS[-1]
    ours = np.asarray(before[searched]["row_nll"])
    against = {}
    for seed in seeds:
        delta = ours - np.asarray(before[seed]["row_nll"])
        against[seed] = {
            "ppl": before[seed]["ppl"][longest],
            "delta_nll": float(delta.mean()),
            "se": float(delta.std(ddof=1) / math.sqrt(delta.size)),
        }
    best = min(against, key=lambda k: against[k]["ppl"])
    return {
        "searched_ppl": before[searched]["ppl"][longest],
        "best_seed": best,
        "holds": before[searched]["ppl"][longest] <= against[best]["ppl"],
        "against": against,
        "rows": int(ours.size),
    }


def with_long_factors(config, factors):
    """A copy of `config` whose long factors are `factors`."""
    return config_lib.replace(config, model=dict(rope_long_factor=tuple(float(f) for f in factors)))


def passkey(config, params, tokenizer, mesh) -> dict:
    scorer = Scorer(config, params, tokenizer, add_bos=config.data.add_bos, mesh=mesh, log=None)
    (result,) = runner.evaluate(scorer, [PASSKEY], limit=PASSKEY_TRIALS)
    return result.metrics


def key_digit_nll(config, params, tokenizer, mesh, trials: int = 10) -> dict[str, float]:
    """Mean NLL of a key's digits where a passkey document has them: the needle's first mention
    (unpredictable: ln 10 = 2.30 a digit), its second a few tokens later, and the answer after
    the question; 1024 tokens, the key at random depths. A model that copies the key scores far
    below ln 10 at the second mention or the answer."""
    scorer = Scorer(config, params, tokenizer, add_bos=config.data.add_bos, mesh=mesh, log=None)
    rng = np.random.default_rng(PASSKEY_SEED + 1)
    pairs = []
    for _ in range(trials):
        key = int(rng.integers(10_000, 100_000))
        room = LENGTHS[-1] - longctx.ANSWER_TOKENS
        prompt, _ = longctx.fit_fillers(scorer.encode, room, float(rng.random()), key)
        ids = scorer.encode(prompt + f" {key}.")
        at = [i for i in range(len(ids) - 4) if tokenizer.decode(ids[i : i + 5]) == str(key)]
        if len(at) != 3:
            raise ValueError(f"key {key}: its five digit ids found at {at}, not at 3 places")
        pairs += [(ids[:i], ids[i : i + 5]) for i in at]
    loglik = np.asarray([ll for ll, *_ in scorer.loglikelihood_ids(pairs)]).reshape(trials, 3)
    names = ("first mention", "second mention", "answer")
    return {name: float(-loglik[:, k].mean() / 5) for k, name in enumerate(names)}


def passkey_training_shard(path: str, config, count: int) -> int:
    """`count` passkey documents unlike the task's prompts only in their draw (`PASSKEY_SEED`):
    the key at a uniform depth, filled to a uniform length the rows hold, then " KEY."; one
    jsonl shard; how many."""
    if not os.path.exists(path):
        tokenizer = load_tokenizer(config)
        rng = np.random.default_rng(PASSKEY_SEED)
        docs = []
        for _ in range(count):
            key = int(rng.integers(10_000, 100_000))
            length = int(rng.integers(PASSKEY_SHORTEST, LENGTHS[-1] - longctx.ANSWER_TOKENS))
            prompt, _ = longctx.fit_fillers(tokenizer.encode, length, float(rng.random()), key)
            docs.append(prompt + f" {key}.")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
        os.replace(path + ".tmp", path)
    return sum(1 for _ in open(path))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    start = time.perf_counter()
    work, report = flags.FLAGS.workdir, flags.FLAGS.report
    short_dir, search_dir = paths.join(work, "short"), paths.join(work, "search")
    extend_dir, passkey_dir = paths.join(work, "extend"), paths.join(work, "passkey")
    f = flags.FLAGS
    steps = [f"--config.train.steps={f.short_steps}"] if f.short_steps else []
    train("", short_dir, steps)

    problem = cli.prepare(
        short_dir,
        LENGTHS[-1],
        DATA,
        samples=SEARCH_ROWS,
        rows=SEARCH_PART,
        documents=fitness.JOINED,
    )
    settings = dataclasses.replace(SETTINGS, generations=f.generations)
    search = cli.run_search(problem, settings, search_dir)

    short_config = params_checkpoint.init_config(short_dir)
    mesh = sharding.make_mesh(short_config.mesh)
    params = restore.restore_sharded_params(short_dir, short_config, mesh)
    tokenizer = load_tokenizer(short_config)
    rows = eval_rows(tokenizer, short_config)
    searched = np.asarray(search["best_factors"])
    candidates = {"plain RoPE": (short_config, None)}
    for name, seed in SEED_OF.items():
        candidates[name] = (problem.config, problem.seeds[seed])
    candidates["LongRoPE search"] = (problem.config, searched)
    before = table(params, rows, candidates, mesh)
    verdict = check(before, "LongRoPE search", list(SEED_OF))
    print(json.dumps({k: v["ppl"] for k, v in before.items()} | {"check": verdict}), flush=True)

    shard = paths.join(work, "long_train", "joined.jsonl")
    count = long_training_shard(shard, short_config, LENGTHS[-1] + 1)
    extension = [
        f"--flagfile={paths.join(search_dir, cli.OVERRIDE_FLAGS)}",
        # The searched factors and the 8x context replace those saved with the params.
        "--config.checkpoint.extend_context=True",
        "--config.data.sources.web.format=jsonl",
    ]
    extend_steps = [f"--config.train.steps={f.extend_steps}"] if f.extend_steps else []
    train(
        "extend",
        extend_dir,
        extension
        + [f"--config.checkpoint.init_from={short_dir}", f"--config.data.sources.web.globs={shard}"]
        + extend_steps,
    )
    extend_config = params_checkpoint.init_config(extend_dir)
    extended = restore.restore_sharded_params(extend_dir, extend_config, mesh)
    name = f"LongRoPE search + {extend_config.train.steps} steps at {LENGTHS[-1]}"
    after = table(extended, rows, {name: (extend_config, None)}, mesh)

    passkey_shard = paths.join(work, "passkey_train", "passkey.jsonl")
    passkey_docs = passkey_training_shard(passkey_shard, short_config, PASSKEY_DOCS)
    train(
        "extend",
        passkey_dir,
        extension
        + [
            f"--config.checkpoint.init_from={extend_dir}",
            f"--config.data.sources.web.globs={passkey_shard}",
            f"--config.train.steps={f.passkey_steps}",
            f"--config.eval.every_steps={f.passkey_steps}",
            f"--config.checkpoint.every_steps={f.passkey_steps}",
        ],
    )
    passkey_config = params_checkpoint.init_config(passkey_dir)
    passkey_params = restore.restore_sharded_params(passkey_dir, passkey_config, mesh)
    passkey_name = f"{name} + {f.passkey_steps} steps of passkey documents"
    passkeys = {
        "searched factors, before fine-tuning": passkey(
            with_long_factors(problem.config, searched), params, tokenizer, mesh
        ),
        name: passkey(extend_config, extended, tokenizer, mesh),
        passkey_name: passkey(passkey_config, passkey_params, tokenizer, mesh),
    }
    digits = {
        name: key_digit_nll(config, model_params, tokenizer, mesh)
        for name, (config, model_params) in {
            name: (extend_config, extended),
            passkey_name: (passkey_config, passkey_params),
        }.items()
    }
    plots = list(zip(passkeys, ("before", "after", "passkey_run"), strict=True))
    os.makedirs(report, exist_ok=True)
    shutil.copy(paths.join(search_dir, cli.PLOT_FILE), os.path.join(report, "search.png"))
    report_lib.plot_lengths(os.path.join(report, "ppl.png"), before, after)
    for title, file in plots:
        longctx.plot_grid(passkeys[title], os.path.join(report, f"passkey_{file}.png"), title)
    facts = {
        "how": (
            f"The short run trained {short_config.train.steps} steps of "
            f"{short_config.train.global_batch_size} x {recipe.SHORT_CONTEXT} tokens; the rows "
            f"below are held-out web documents (content hash < {short_config.data.eval_fraction}, "
            f"never trained on) joined end to end and cut into rows of {LENGTHS[-1]} tokens: "
            f"{EVAL_ROWS} of the odd rows ({EVAL_PART}), cut into rows of each length, while the "
            f"search scored {SEARCH_ROWS} of the even ones ({SEARCH_PART}). All rescaled rows use "
            f"the same LongRoPE cos/sin magnitude (sqrt(1 + ln 8 / ln 128)); below 128 tokens "
            f"the short factors (ones) apply, so PI, NTK-aware, YaRN and the search agree at 1x. "
            f"The extension run trained on {count} documents of at least {LENGTHS[-1] + 1} "
            f"tokens joined from the training documents; the passkey run, from its params, on "
            f"{passkey_docs} passkey documents (the task's prompt, another draw of keys, depths "
            f"and lengths, then the key)."
        ),
        "eval_tokens": int(rows.size),
        "passkey": passkeys,
        "key_digit_nll": digits,
        "plots": plots,
        "settings": settings,
        "passkey_trials": PASSKEY_TRIALS,
        "minutes": (time.perf_counter() - start) / 60,
    }
    results = {
        "before": before,
        "after": after,
        "check": verdict,
        "search": search,
        "passkey": passkeys,
        "key_digit_nll": digits,
    }
    with open(os.path.join(report, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(report, "REPORT.md"), "w") as f:
        f.write(report_lib.markdown(before, after, search, verdict, facts))
    print(f"wrote {report}/REPORT.md ({facts['minutes']:.1f} minutes)")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir/longctx", "Runs and the search go here.")
    flags.DEFINE_string("report", "docs/longctx", "REPORT.md and its plots go here.")
    # Shorter runs (a smoke test of the whole path); 0: the recipe's.
    flags.DEFINE_integer("short_steps", 0, "Steps of the short-context run.")
    flags.DEFINE_integer("extend_steps", 0, "Steps of the extension run.")
    flags.DEFINE_integer("generations", SETTINGS.generations, "Generations of the search.")
    flags.DEFINE_integer("passkey_steps", 200, "Steps of the passkey run.")
    app.run(main)
