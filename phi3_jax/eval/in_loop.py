"""Benchmark scores inside the training loop: `eval.tasks` every `eval.every_steps`.

The requests are built once when the run starts (the first `eval.task_limit` documents of each
task, in `eval.task_style`); each evaluation scores them with the current params, wherever they
live on the run's mesh, and returns `eval_tasks/<task>/<metric>` scalars, which the loop writes
beside the held-out loss (stdout, TensorBoard, metrics.jsonl). In a multi-process run, process
0 reads the tasks and sends the requests to the others; every process scores them on the mesh
(`multihost`).
"""

from __future__ import annotations

import ml_collections

from phi3_jax.eval import multihost, runner, tasks
from phi3_jax.eval.scorer import Scorer

PREFIX = "eval_tasks"


def task_names(config: ml_collections.ConfigDict) -> list[str]:
    """The tasks of `eval.tasks` (a comma-separated string; empty: none)."""
    return [n.strip() for n in config.eval.tasks.split(",") if n.strip()]


def make(config: ml_collections.ConfigDict, tokenizer, mesh=None, log=print):
    """A function params -> scalars for the configured tasks, or None when there are none.
    Unknown task names fail here, before training starts."""
    names = task_names(config)
    if not names:
        return None
    benchmarks = tasks.resolve(names)
    limit, style = config.eval.task_limit, config.eval.task_style
    built = multihost.shared(
        lambda: {t.name: tasks.build(t, style, None, limit) for t in benchmarks}
    )
    scorer = Scorer(config, None, tokenizer, add_bos=config.data.add_bos, mesh=mesh, log=log)

    def score(params) -> dict[str, float]:
        scorer.params = params
        out = {}
        for task in benchmarks:
            result = runner.run_task(
                scorer, task, style=style, limit=limit, instances=built[task.name]
            )
            out |= {f"{PREFIX}/{task.name}/{k}": v for k, v in result.metrics.items()}
        return out

    return score


def line(step: int, scalars: dict[str, float]) -> str:
    """One stdout line of the task scores."""
    parts = [f"{k[len(PREFIX) + 1 :]} {v:.4f}" for k, v in scalars.items() if k.startswith(PREFIX)]
    return f"eval step {step} | tasks: " + ", ".join(parts)
