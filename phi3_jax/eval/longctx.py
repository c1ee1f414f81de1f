"""Long-context tasks of the evaluation harness: passkey retrieval and perplexity by position.

- `passkey` (or `passkey:L1,L2,...`): a five-digit key hidden at depths 0, 0.25, 0.5, 0.75 and 1
  of filler text (the prompt of Mohtashami & Jaggi 2023, arXiv 2305.16300, which LongRoPE and
  LongLoRA use), each prompt filled to L tokens; the answer is the model's greedy continuation of
  "The pass key is", right when its first number is the key. L defaults to 1/8, 1/4, 1/2 and all
  of the context window. Metrics: `acc` over every prompt and `acc@L/DEPTH` per cell; and, graded
  where greedy answers are all wrong, `choice_acc` (`choice_acc@L/DEPTH`): how often the key's
  log-likelihood as the continuation (" KEY.") beats that of `CHOICES - 1` other random keys
  (chance: 1 / CHOICES), so a model that does not retrieve scores about chance, and one that
  retrieves but answers in another format still scores above it.
- `ppl_positions:PATH` (`ppl_positions_joined:PATH`): rows of the context window's length from
  the texts of PATH (jsonl/parquet, `text` field): whole documents at least that long (or the
  documents joined and cut, `fitness.long_rows`), scored once; metrics `ppl` over all positions
  and `ppl@FIRST-LAST` for eight equal position buckets.

Several processes (`multihost`): the driver reads PATH; every process builds the same prompts and
rows and scores them on the scorer's mesh.

`python -m phi3_jax.eval.longctx --results=RESULTS.json --out=grid.png` draws the passkey
accuracy of an evaluation's --output as a depth x length grid.
"""

from __future__ import annotations

import functools
import json
import re
import time

import jax
import numpy as np

from phi3_jax import paths, sharding
from phi3_jax.eval import data, multihost, tasks
from phi3_jax.eval.scorer import Scorer
from phi3_jax.longrope import fitness

PASSKEY = "passkey"
POSITIONS = "ppl_positions"
POSITIONS_JOINED = "ppl_positions_joined"
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRIALS = 2
BUCKETS = 8
SEED = 0
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
FILLER = (
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER_TOKENS = 8
# The key and this many less one other keys, scored as continuations (`choice_acc`).
CHOICES = 10
# The default grid's shortest prompt (the prompt without filler is about 70 tokens).
MIN_DEFAULT_LENGTH = 128


def is_task(name: str) -> bool:
    """Whether `name` is one of this module's tasks (runner routes it here)."""
    return name == PASSKEY or name.startswith(
        (PASSKEY + ":", POSITIONS + ":", POSITIONS_JOINED + ":")
    )


def passkey_prompt(filler_count: int, depth: float, key: int) -> str:
    """The prompt with `filler_count` filler paragraphs and the key after round(depth * count)."""
    at = round(depth * filler_count)
    needle = NEEDLE.format(key=key)
    return INTRO + FILLER * at + needle + FILLER * (filler_count - at) + QUESTION


def fit_fillers(encode, length: int, depth: float, key: int) -> tuple[str, int]:
    """The longest prompt of at most `length` tokens (`encode` counts them) and its length;
    a length too short for the prompt without filler is a TaskError."""
    low, high = 0, 1
    if len(encode(passkey_prompt(0, depth, key))) > length:
        raise tasks.TaskError(f"{PASSKEY}: a prompt of {length} tokens cannot hold the key")
    while len(encode(passkey_prompt(high, depth, key))) <= length:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if len(encode(passkey_prompt(mid, depth, key))) <= length:
            low = mid
        else:
            high = mid
    prompt = passkey_prompt(low, depth, key)
    return prompt, len(encode(prompt))


def passkey_lengths(name: str, max_length: int) -> list[int]:
    """The prompt lengths of `passkey[:L1,L2,...]`, each at most the context window."""
    if name == PASSKEY:
        fitting = {max_length // d for d in (8, 4, 2, 1) if max_length // d >= MIN_DEFAULT_LENGTH}
        return sorted(fitting or {max_length})
    try:
        lengths = [int(x) for x in name.split(":", 1)[1].split(",")]
    except ValueError:
        raise tasks.TaskError(f"{name}: expected {PASSKEY}:L1,L2,... (token counts)") from None
    too_long = [n for n in lengths if not 0 < n <= max_length]
    if too_long:
        raise tasks.TaskError(f"{name}: length {too_long[0]} outside the context (1..{max_length})")
    return lengths


def first_number(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def _random_key(rng: np.random.Generator) -> int:
    return int(rng.integers(10_000, 100_000))


def other_keys(rng: np.random.Generator, key: int, count: int) -> list[int]:
    """`count` distinct random keys, none of them `key`."""
    out: list[int] = []
    while len(out) < count:
        other = _random_key(rng)
        if other != key and other not in out:
            out.append(other)
    return out


def choice_wins(scorer: Scorer, prompts: list[str], choices: list[list[int]]) -> list[float]:
    """1 where the first of a prompt's keys is the likeliest continuation " KEY." of it (a tie
    is a loss), else 0."""
    pairs = [
        (prompt, f" {key}.") for prompt, keys in zip(prompts, choices, strict=True) for key in keys
    ]
    loglik = np.asarray([ll for ll, *_ in scorer.loglikelihood(pairs, "passkey choices")])
    loglik = loglik.reshape(len(prompts), -1)
    return [float(np.all(row[0] > row[1:])) for row in loglik]


def run_passkey(scorer: Scorer, name: str, limit: int | None, log_samples: bool):
    """(metrics, settings, samples) of passkey retrieval; `limit` caps the trials per cell."""
    trials = min(TRIALS, limit) if limit else TRIALS
    rng = np.random.default_rng(SEED)
    cells = []
    for length in passkey_lengths(name, scorer.max_length):
        for depth in DEPTHS:
            for _ in range(trials):
                key = _random_key(rng)
                room = length - ANSWER_TOKENS
                prompt, tokens = fit_fillers(scorer.encode, room, depth, key)
                cells.append((length, depth, key, prompt, tokens))
    outputs = scorer.generate([(c[3], ("\n", "."), ANSWER_TOKENS) for c in cells])
    # Drawn after the prompts, so the prompts (and `acc`) are those of a run without choices.
    choices = [[c[2], *other_keys(rng, c[2], CHOICES - 1)] for c in cells]
    wins = choice_wins(scorer, [c[3] for c in cells], choices)
    right: dict[str, list[float]] = {}
    picked: dict[str, list[float]] = {}
    samples = []
    for (length, depth, key, _, tokens), text, win in zip(cells, outputs, wins, strict=True):
        hit = float(first_number(text) == key)
        right.setdefault(f"acc@{length}/{depth:g}", []).append(hit)
        picked.setdefault(f"choice_acc@{length}/{depth:g}", []).append(win)
        if log_samples:
            samples.append(
                {
                    "length": length,
                    "depth": depth,
                    "key": key,
                    "tokens": tokens,
                    "answer": text,
                    "choice_right": win,
                }
            )
    metrics = {
        "acc": float(np.mean(_flat(right))),
        "choice_acc": float(np.mean(_flat(picked))),
    }
    metrics |= {k: float(np.mean(v)) for k, v in (right | picked).items()}
    settings = {
        "kind": "passkey",
        "documents": len(cells),
        "lengths": passkey_lengths(name, scorer.max_length),
        "depths": list(DEPTHS),
        "trials": trials,
        "choices": CHOICES,
    }
    return metrics, settings, samples


def _flat(by_cell: dict[str, list[float]]) -> list[float]:
    return [h for v in by_cell.values() for h in v]


def run_positions(scorer: Scorer, name: str, limit: int | None, log_samples: bool):
    """(metrics, settings, samples) of perplexity by position bucket over long rows."""
    kind, path = name.split(":", 1)
    mode = fitness.JOINED if kind == POSITIONS_JOINED else fitness.WHOLE
    tok = scorer.tokenizer
    bos = scorer.prefix_id if scorer.add_bos else None
    rows = fitness.long_rows(
        multihost.shared(functools.partial(data.read_texts, path)),
        tok.encode,
        scorer.max_length,
        limit,
        bos=bos,
        eos=tok.eos_id,
        mode=mode,
    )
    config = scorer.config
    mesh = scorer.mesh or sharding.make_mesh(config.mesh, jax.local_devices()[:1])
    nll = fitness.PositionNLL(config, scorer.params, rows, mesh)()
    metrics = {"ppl": float(np.exp(np.mean(nll)))}
    metrics |= {f"ppl@{a}-{b}": p for a, b, p in fitness.bucket_perplexity(nll, BUCKETS)}
    settings = {"kind": "positions", "documents": int(rows.shape[0]), "length": rows.shape[1]}
    samples = [{"position_nll": nll.tolist()}] if log_samples else []
    return metrics, settings, samples


def run(scorer: Scorer, name: str, *, limit: int | None = None, log_samples: bool = False):
    """(metrics, settings, samples) of the long-context task `name` (see `is_task`)."""
    start = time.perf_counter()
    task = run_passkey if name.split(":")[0] == PASSKEY else run_positions
    metrics, settings, samples = task(scorer, name, limit, log_samples)
    return metrics, settings | {"seconds": round(time.perf_counter() - start, 3)}, samples


def passkey_grid(
    metrics: dict[str, float], metric: str = "acc"
) -> tuple[list[int], list[float], np.ndarray]:
    """(lengths, depths, accuracy [depth, length]) from a passkey task's `METRIC@L/DEPTH`
    metrics (`acc` or `choice_acc`)."""
    cells = {}
    for key, value in metrics.items():
        match = re.fullmatch(re.escape(metric) + r"@(\d+)/([\d.]+)", key)
        if match:
            cells[(int(match.group(1)), float(match.group(2)))] = value
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), value in cells.items():
        grid[depths.index(depth), lengths.index(length)] = value
    return lengths, depths, grid


def plot_grid(
    metrics: dict[str, float], path: str, title: str = "passkey retrieval", metric: str = "acc"
) -> None:
    """The passkey accuracy (`metric`) as a depth x length heat map, each cell's value in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, depths, grid = passkey_grid(metrics, metric)
    if not lengths:
        raise tasks.TaskError(f"no passkey metrics ({metric}@LENGTH/DEPTH) to plot")
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.6 * len(depths) + 1.5))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("depth of the key")
    for (i, j), value in np.ndenumerate(grid):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    results = json.loads(paths.path(flags.FLAGS.results).read_text())["results"]
    names = [n for n in results if n.split(":")[0] == PASSKEY]
    if not names:
        raise SystemExit(f"{flags.FLAGS.results}: no passkey task in its results")
    plot_grid(results[names[0]]["metrics"], flags.FLAGS.out, title=names[0])
    print(f"wrote {flags.FLAGS.out}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("results", None, "An evaluation's --output JSON.", required=True)
    flags.DEFINE_string("out", "passkey.png", "Where the grid plot goes.")
    app.run(main)
