"""Runs tasks on a Scorer: requests built, scored, turned into per-task metrics and samples.

`evaluate` is what the CLI (`python -m phi3_jax.eval`) and the training loop call. A task name
is a benchmark of `tasks.TASKS` (or the group `mmlu`), or `ppl:PATH` for the rolling
log-likelihood of a jsonl(.gz|.zst) or parquet text set (its `text` field), or a long-context
task of `longctx` (passkey, ppl_positions:PATH).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

from phi3_jax.eval import data, longctx, metrics, multihost, tasks
from phi3_jax.eval.scorer import Scorer

PPL_PREFIX = "ppl:"


@dataclasses.dataclass
class TaskResult:
    """One task's metrics and the settings it ran with; `samples` only with log_samples."""

    name: str
    metrics: dict[str, float]
    settings: dict
    samples: list[dict] = dataclasses.field(default_factory=list)


def _score_choices(scorer: Scorer, task: tasks.Task, instances, log_samples: bool):
    pairs = [(r.context, r.continuation) for inst in instances for r in inst.requests]
    scores = iter(scorer.loglikelihood(pairs, desc=task.name))
    per_doc, samples = [], []
    for inst in instances:
        got = [next(scores) for _ in inst.requests]
        lls, tokens = [g[0] for g in got], [g[2] for g in got]
        scored = [r.continuation for r in inst.requests]
        choices = inst.doc.choices if task.kind == "multiple_choice" else ()
        per_doc.append(metrics.multiple_choice(lls, tokens, choices, inst.doc.gold, scored))
        if log_samples:
            samples.append(
                {
                    "requests": [dataclasses.asdict(r) for r in inst.requests],
                    "gold": inst.doc.gold,
                    "loglikelihood": lls,
                    "is_greedy": [g[1] for g in got],
                    "tokens": tokens,
                    "metrics": per_doc[-1],
                }
            )
    return per_doc, samples


def _score_generation(scorer: Scorer, task: tasks.Task, instances, log_samples: bool):
    reqs = [
        (i.requests[0].context, i.requests[0].until, i.requests[0].max_gen_toks) for i in instances
    ]
    outputs = scorer.generate(reqs)
    match = metrics.gsm8k_match if task.name == "gsm8k" else metrics.triviaqa_match
    per_doc, samples = [], []
    for inst, text in zip(instances, outputs, strict=True):
        target = inst.doc.targets[0] if task.name == "gsm8k" else inst.doc.targets
        per_doc.append({"exact_match": match(text, target)})
        if log_samples:
            samples.append(
                {
                    "request": dataclasses.asdict(inst.requests[0]),
                    "generation": text,
                    "targets": list(inst.doc.targets),
                    "metrics": per_doc[-1],
                }
            )
    return per_doc, samples


def run_task(
    scorer: Scorer,
    task: tasks.Task,
    *,
    style: str = "lm_eval",
    num_fewshot: int | None = None,
    limit: int | None = None,
    log_samples: bool = False,
    instances: list[tasks.Instance] | None = None,
) -> TaskResult:
    """Builds (unless `instances` are given, built before), scores and aggregates one task.
    Several processes: the driver reads the task, and every process scores it."""
    start = time.perf_counter()
    truncated = scorer.counters.truncated
    if instances is None:
        instances = multihost.shared(
            functools.partial(tasks.build, task, style, num_fewshot, limit)
        )
    if task.kind == "generation":
        per_doc, samples = _score_generation(scorer, task, instances, log_samples)
    else:
        per_doc, samples = _score_choices(scorer, task, instances, log_samples)
    settings = {
        "kind": task.kind,
        "style": style,
        "num_fewshot": task.num_fewshot if num_fewshot is None else num_fewshot,
        "documents": len(instances),
        "requests": sum(len(i.requests) for i in instances),
        "truncated": scorer.counters.truncated - truncated,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return TaskResult(task.name, metrics.mean(per_doc), settings, samples)


def run_rolling(
    scorer: Scorer, name: str, *, limit: int | None = None, log_samples: bool = False
) -> TaskResult:
    """Rolling log-likelihood of the texts of `ppl:PATH` (read by the driver process)."""
    start = time.perf_counter()
    texts = multihost.shared(functools.partial(data.read_texts, name[len(PPL_PREFIX) :]))[:limit]
    scores = scorer.loglikelihood_rolling(texts)
    lls, tokens = [s[0] for s in scores], [s[1] for s in scores]
    settings = {
        "kind": "rolling",
        "documents": len(texts),
        "tokens": sum(tokens),
        "seconds": round(time.perf_counter() - start, 3),
    }
    samples = [{"loglikelihood": ll, "tokens": n} for ll, n in scores] if log_samples else []
    return TaskResult(name, metrics.rolling(lls, tokens, texts), settings, samples)


def benchmark_names(names: Sequence[str]) -> list[str]:
    """The names that are benchmarks of `tasks` (not ppl:PATH, not long-context tasks)."""
    return [n for n in names if not n.startswith(PPL_PREFIX) and not longctx.is_task(n)]


def evaluate(
    scorer: Scorer,
    names: Sequence[str],
    *,
    style: str = "lm_eval",
    num_fewshot: int | None = None,
    limit: int | None = None,
    log_samples: bool = False,
) -> list[TaskResult]:
    """Every named task in order (names checked before anything runs)."""
    rolling = [n for n in names if n.startswith(PPL_PREFIX)]
    long_context = [n for n in names if longctx.is_task(n)]
    benchmarks = tasks.resolve(benchmark_names(names))
    tasks.check_style(style)
    results = [
        run_task(
            scorer, t, style=style, num_fewshot=num_fewshot, limit=limit, log_samples=log_samples
        )
        for t in benchmarks
    ]
    results += [run_rolling(scorer, n, limit=limit, log_samples=log_samples) for n in rolling]
    results += [
        TaskResult(n, *longctx.run(scorer, n, limit=limit, log_samples=log_samples))
        for n in long_context
    ]
    return results


def table(results: Sequence[TaskResult]) -> str:
    """A markdown table: one row per task, its metrics and how many documents."""
    lines = ["| task | shots | docs | metric | value |", "|---|---:|---:|---|---:|"]
    for r in results:
        shots = r.settings.get("num_fewshot", "")
        for i, (k, v) in enumerate(r.metrics.items()):
            head = f"| {r.name} | {shots} | {r.settings['documents']} |" if i == 0 else "| | | |"
            lines.append(f"{head} {k} | {v:.4f} |")
    return "\n".join(lines)
