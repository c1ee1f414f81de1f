"""`python -m phi3_jax.eval`: score a training run or a Hugging Face Phi-3 on benchmarks.

  python -m phi3_jax.eval --workdir=RUN [--step=N] --tasks=arc_easy,mmlu,gsm8k,ppl:FILE.jsonl
  python -m phi3_jax.eval --hf_dir=DIR [--tokenizer=PATH --tokenizer_kind=KIND] --tasks=...
      [--num_fewshot=K] [--limit=N] [--style=lm_eval|report] [--output=results.json]
      [--log_samples]

Prints a table and writes JSON: per-task metrics and settings, the checkpoint and its step, and
with --log_samples every request with its scores.

With more than one device the model is scored on a data-parallel mesh over all of them (each
batch's rows split over the devices, the params replicated). Several processes
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, or a detected cluster; see
phi3_jax.distributed) make one mesh of all their devices: process 0 reads the tasks, prints and
writes the results, and every process computes; the scores equal those of one process with as
many devices.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from absl import app, flags, logging

from phi3_jax import config as config_lib
from phi3_jax import distributed, paths, sharding
from phi3_jax.config import TOKENIZER_KINDS
from phi3_jax.errors import BadInputError
from phi3_jax.eval import multihost, prompts, runner, source, tasks
from phi3_jax.eval.scorer import Scorer

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A training run's workdir (its latest checkpoint).")
    flags.DEFINE_integer("step", None, "With --workdir: this checkpoint step, not the latest.")
    flags.DEFINE_string("hf_dir", None, "A Hugging Face Phi-3 directory instead of a run.")
    flags.DEFINE_string("tokenizer", None, "With --hf_dir: its tokenizer (default: the dir).")
    flags.DEFINE_enum("tokenizer_kind", "hf", TOKENIZER_KINDS, "The kind of --tokenizer.")
    flags.DEFINE_list("tasks", None, "Tasks: names, the group mmlu, or ppl:PATH.", required=True)
    flags.DEFINE_integer("num_fewshot", None, "Shots for every task (default: each task's).")
    flags.DEFINE_integer("limit", None, "Score only the first N documents of each task.")
    flags.DEFINE_enum("style", "lm_eval", prompts.STYLES, "Prompt style.")
    flags.DEFINE_string("output", None, "Write the results as JSON here.")
    flags.DEFINE_bool("log_samples", False, "Include every request and its scores in --output.")
    flags.DEFINE_string("dtype", "float32", "Compute dtype for scoring.")
    flags.DEFINE_integer("batch_tokens", 4096, "Padded tokens per scoring batch.")
    flags.DEFINE_bool(
        "add_bos",
        None,
        "Start every context with BOS (default: the run's data.add_bos; Hugging Face models: no).",
    )


# Bad input (a task, the model source, a tokenizer: errors.BadInputError): one line on stderr and
# exit status 1, no traceback. (FileNotFoundError: a missing task file, run or checkpoint step.)
INPUT_ERRORS = (BadInputError, FileNotFoundError)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    distributed.initialize()
    try:
        evaluate()
    except INPUT_ERRORS as e:
        raise SystemExit(f"phi3_jax.eval: {e}") from None


def evaluate() -> None:
    """Loads the model of the flags, scores their tasks, prints the table, writes --output."""
    tasks.resolve(runner.benchmark_names(FLAGS.tasks))
    mesh = all_devices() if jax.device_count() > 1 else None
    loaded = source.load(
        FLAGS.workdir, FLAGS.hf_dir, FLAGS.tokenizer, FLAGS.step, FLAGS.tokenizer_kind, mesh
    )
    config = config_lib.replace(loaded.config, model=dict(dtype=FLAGS.dtype))
    add_bos = loaded.add_bos if FLAGS.add_bos is None else FLAGS.add_bos
    scorer = Scorer(
        config,
        loaded.params,
        loaded.tokenizer,
        add_bos=add_bos,
        batch_tokens=FLAGS.batch_tokens,
        mesh=mesh,
        log=print if multihost.is_driver() else None,
    )
    results = runner.evaluate(
        scorer,
        FLAGS.tasks,
        style=FLAGS.style,
        num_fewshot=FLAGS.num_fewshot,
        limit=FLAGS.limit,
        log_samples=FLAGS.log_samples,
    )
    if not multihost.is_driver():
        return
    print(runner.table(results))
    truncated = scorer.counters.truncated
    if truncated:
        print(f"{truncated} requests were longer than the context and left-truncated")
    if FLAGS.output:
        out = {
            "source": loaded.source,
            "settings": {
                "style": FLAGS.style,
                "num_fewshot": FLAGS.num_fewshot,
                "limit": FLAGS.limit,
                "dtype": FLAGS.dtype,
                "add_bos": add_bos,
                "max_length": scorer.max_length,
            },
            "truncated": truncated,
            "compiled_shapes": sorted(map(list, scorer.counters.shapes)),
            "results": {
                r.name: {"metrics": r.metrics, "settings": r.settings}
                | ({"samples": r.samples} if FLAGS.log_samples else {})
                for r in results
            },
        }
        paths.path(FLAGS.output).write_text(json.dumps(out, indent=1))
        print(f"wrote {FLAGS.output}")


def all_devices() -> jax.sharding.Mesh:
    """A data-parallel mesh over every process's devices (the params replicated on it)."""
    axes = dict(data=-1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)
    return sharding.make_mesh(ml_collections.ConfigDict(axes))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
