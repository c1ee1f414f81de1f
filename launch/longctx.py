"""`make longctx`: LongRoPE end to end on the bundled corpus, on CPU, in tens of minutes.

  python -m launch.longctx --workdir=workdir/longctx --report=docs/longctx

1. `short`: configs/phi3_tiny_longctx.py trained at 128 tokens per row (phase-1 web text, a fifth
   of the documents held out by content hash).
2. `search`: the factor search to 8x (1024 tokens) on `SEARCH_ROWS` rows of held-out text.
3. The table before any fine-tuning: perplexity at 1x, 2x, 4x and 8x of `EVAL_ROWS` other
   held-out rows (disjoint from the search's) with plain RoPE, PI, NTK-aware, YaRN and the
   searched factors, and by position bucket at 8x.
4. `extend`: configs/phi3_tiny_longctx.py:extend from the short run's params
   (checkpoint.init_from, checkpoint.extend_context) with the searched factors (the search's
   override.flags) on rows of 1024 tokens, then the same table for it.
5. Passkey retrieval of both models at 256, 512 and 1024 tokens (eval.longctx) as grids.

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
SEARCH_ROWS = 4
EVAL_ROWS = 8
LENGTHS = tuple(recipe.SHORT_CONTEXT * k for k in (1, 2, 4, 8))
SETTINGS = evolution.Settings(population=12, generations=6, mutations=4, crossovers=4)
PASSKEY = "passkey:256,512,1024"
PASSKEY_TRIALS = 1
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
    """EVAL_ROWS rows of the target length after the search's (same held-out documents)."""
    texts = fitness.held_out(cli.read_documents(DATA), config.data.eval_fraction)
    bos = tokenizer.bos_id if config.data.add_bos else None
    rows = fitness.long_rows(
        texts,
        tokenizer.encode,
        LENGTHS[-1],
        SEARCH_ROWS + EVAL_ROWS,
        bos=bos,
        eos=tokenizer.eos_id,
        mode=fitness.JOINED,
    )
    return rows[SEARCH_ROWS:]


def table(params, rows: np.ndarray, candidates: dict, mesh) -> dict:
    """{method: {"ppl": {length: ppl}, "buckets": [(first, last, ppl)] at the longest}}: the
    same tokens cut into rows of each length; `candidates` maps a method to (its config, its long
    factors or None for the config's own). One compile per config and length."""
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
    return out


def with_long_factors(config, factors):
    """A copy of `config` whose long factors are `factors`."""
    return config_lib.replace(config, model=dict(rope_long_factor=tuple(float(f) for f in factors)))


def passkey(config, params, tokenizer, mesh) -> dict:
    scorer = Scorer(config, params, tokenizer, add_bos=config.data.add_bos, mesh=mesh, log=None)
    (result,) = runner.evaluate(scorer, [PASSKEY], limit=PASSKEY_TRIALS)
    return result.metrics


def plot_lengths(path: str, before: dict, after: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, row in before.items():
        ax.plot(LENGTHS, [row["ppl"][n] for n in LENGTHS], marker="o", label=f"{name} (before)")
    for name, row in after.items():
        ax.plot(LENGTHS, [row["ppl"][n] for n in LENGTHS], marker="s", ls="--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(LENGTHS, [f"{n}\n({n // LENGTHS[0]}x)" for n in LENGTHS])
    ax.set_xlabel("tokens per row (trained at 128)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(before: dict, after: dict, search: dict, facts: dict) -> str:
    lengths = " | ".join(f"{n} ({n // LENGTHS[0]}x)" for n in LENGTHS)
    lines = [
        "# LongRoPE on the tiny model: factor search, extension run, long-context evaluation",
        "",
        "Written by `make longctx` (`python -m launch.longctx`); every number below is",
        "from that run. " + facts["how"],
        "",
        f"## Held-out perplexity by row length ({facts['eval_tokens']} tokens at every length)",
        "",
        f"| method | {lengths} |",
        "|---|" + "---:|" * len(LENGTHS),
    ]
    for rows in (before, after):
        for name, row in rows.items():
            cells = " | ".join(f"{row['ppl'][n]:.3f}" for n in LENGTHS)
            lines.append(f"| {name} | {cells} |")
    lines += [
        "",
        "## Perplexity by position at 8x (before fine-tuning; the extension run last)",
        "",
    ]
    first = next(iter(before.values()))["buckets"]
    lines.append("| method | " + " | ".join(f"{a}-{b}" for a, b, _ in first) + " |")
    lines.append("|---|" + "---:|" * len(first))
    for rows in (before, after):
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{p:.2f}" for *_, p in row["buckets"]) + " |")
    seeds = ", ".join(f"{k} {v:.4f}" for k, v in search["seed_ppl"].items())
    lines += [
        "",
        "## The search",
        "",
        f"On its own {SEARCH_ROWS} rows of {LENGTHS[-1]} tokens: best {search['best_ppl']:.4f} "
        f"after {search['generation']} generations ({search['scored']} candidates scored, "
        f"{search['compiles']} compile); the seeds: {seeds}. Settings: population "
        f"{SETTINGS.population}, mutations {SETTINGS.mutations}, crossovers "
        f"{SETTINGS.crossovers}, seed {SETTINGS.seed}; fitness: perplexity of the rows.",
        "",
        "Searched long factors (one per rotary dimension pair, fastest first): "
        + ", ".join(f"{f:g}" for f in search["best_factors"]),
        "",
        "![best perplexity per generation](search.png)",
        "![perplexity by row length](ppl.png)",
        "",
        "## Passkey retrieval (greedy answer; one key per cell)",
        "",
    ]
    for name, metrics in facts["passkey"].items():
        lines.append(f"- {name}: accuracy {metrics['acc']:.2f} over every cell")
    lines += ["", "![passkey, before](passkey_before.png) ![passkey, after](passkey_after.png)"]
    lines += ["", f"Wall time: {facts['minutes']:.1f} minutes on this machine.", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    start = time.perf_counter()
    work, report = flags.FLAGS.workdir, flags.FLAGS.report
    short_dir, search_dir = paths.join(work, "short"), paths.join(work, "search")
    extend_dir = paths.join(work, "extend")
    f = flags.FLAGS
    steps = [f"--config.train.steps={f.short_steps}"] if f.short_steps else []
    train("", short_dir, steps)

    problem = cli.prepare(
        short_dir,
        LENGTHS[-1],
        DATA,
        samples=SEARCH_ROWS,
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
    print(json.dumps({k: v["ppl"] for k, v in before.items()}), flush=True)

    shard = paths.join(work, "long_train", "joined.jsonl")
    count = long_training_shard(shard, short_config, LENGTHS[-1] + 1)
    train(
        "extend",
        extend_dir,
        [
            f"--flagfile={paths.join(search_dir, cli.OVERRIDE_FLAGS)}",
            f"--config.checkpoint.init_from={short_dir}",
            # The searched factors and the 8x context replace those saved with the params.
            "--config.checkpoint.extend_context=True",
            f"--config.data.sources.web.globs={shard}",
            "--config.data.sources.web.format=jsonl",
        ]
        + ([f"--config.train.steps={f.extend_steps}"] if f.extend_steps else []),
    )
    extend_config = params_checkpoint.init_config(extend_dir)
    extended = restore.restore_sharded_params(extend_dir, extend_config, mesh)
    name = f"LongRoPE search + {extend_config.train.steps} steps at {LENGTHS[-1]}"
    after = table(extended, rows, {name: (extend_config, None)}, mesh)

    passkeys = {
        "searched factors, before fine-tuning": passkey(
            with_long_factors(problem.config, searched), params, tokenizer, mesh
        ),
        name: passkey(extend_config, extended, tokenizer, mesh),
    }
    os.makedirs(report, exist_ok=True)
    shutil.copy(paths.join(search_dir, cli.PLOT_FILE), os.path.join(report, "search.png"))
    plot_lengths(os.path.join(report, "ppl.png"), before, after)
    for (title, metrics), file in zip(passkeys.items(), ("before", "after"), strict=True):
        longctx.plot_grid(metrics, os.path.join(report, f"passkey_{file}.png"), title=title)
    facts = {
        "how": (
            f"The short run trained {short_config.train.steps} steps of "
            f"{short_config.train.global_batch_size} x {recipe.SHORT_CONTEXT} tokens; the rows "
            f"below are held-out web documents (content hash < {short_config.data.eval_fraction}, "
            f"never trained on) joined end to end, {EVAL_ROWS} rows of {LENGTHS[-1]} tokens cut "
            f"into rows of each length, disjoint from the search's {SEARCH_ROWS} rows. All "
            f"rescaled rows use the same LongRoPE cos/sin magnitude "
            f"(sqrt(1 + ln 8 / ln 128)); below 128 tokens the short factors (ones) apply, so "
            f"PI, NTK-aware, YaRN and the search agree at 1x. The extension run trained on "
            f"{count} documents of at least {LENGTHS[-1] + 1} tokens joined from the training "
            f"documents."
        ),
        "eval_tokens": int(rows.size),
        "passkey": passkeys,
        "minutes": (time.perf_counter() - start) / 60,
    }
    results = {"before": before, "after": after, "search": search, "passkey": passkeys}
    with open(os.path.join(report, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(report, "REPORT.md"), "w") as f:
        f.write(markdown(before, after, search, facts))
    print(f"wrote {report}/REPORT.md ({facts['minutes']:.1f} minutes)")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "workdir/longctx", "Runs and the search go here.")
    flags.DEFINE_string("report", "docs/longctx", "REPORT.md and its plots go here.")
    # Shorter runs (a smoke test of the whole path); 0: the recipe's.
    flags.DEFINE_integer("short_steps", 0, "Steps of the short-context run.")
    flags.DEFINE_integer("extend_steps", 0, "Steps of the extension run.")
    flags.DEFINE_integer("generations", SETTINGS.generations, "Generations of the search.")
    app.run(main)
