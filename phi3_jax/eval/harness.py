"""lm-eval-harness on phi3_jax models: the `phi3_jax` model backend and the offline task YAMLs.

  python -m phi3_jax.eval.harness --model phi3_jax --model_args workdir=RUN \
      --tasks arc_easy,winogrande --limit 100 [any lm_eval option]
  python -m phi3_jax.eval.harness write-tasks DIR     # the YAMLs, for lm_eval --include_path=DIR

The first form is `lm_eval` with this module imported (which registers `phi3_jax`) and with
`--include_path` pointing at this project's offline tasks, written fresh from `tasks.TASKS`
(lm-eval style prompts; `python -m phi3_jax.eval` also has the report's). Each YAML loads its
documents already rendered by `tasks` (query, choices, gold ...), so lm-eval builds exactly the
requests that `phi3_jax.eval` builds, and its own metrics (acc, acc_norm) score them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Sequence

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from phi3_jax import config as config_lib
from phi3_jax.eval import metrics, prompts, source, tasks
from phi3_jax.eval.scorer import Scorer

DEFAULT_MAX_GEN_TOKS = 256


class Phi3JaxLM(LM):
    """An lm-eval model over our Scorer. model_args: workdir=RUN [step=N] | hf_dir=DIR
    tokenizer=MODEL; dtype (float32), batch_tokens, add_bos, max_length."""

    def __init__(
        self,
        workdir: str | None = None,
        hf_dir: str | None = None,
        tokenizer: str | None = None,
        step: int | None = None,
        dtype: str = "float32",
        batch_tokens: int = 4096,
        add_bos: bool | None = None,
        max_length: int | None = None,
        scorer: Scorer | None = None,
        **_harness_args,  # batch_size, device, ...: lm-eval passes them to every model
    ):
        super().__init__()
        if scorer is None:
            loaded = source.load(workdir, hf_dir, tokenizer, step)
            loaded = dataclasses.replace(
                loaded, config=config_lib.replace(loaded.config, model=dict(dtype=dtype))
            )
            scorer = Scorer(
                loaded.config,
                loaded.params,
                loaded.tokenizer,
                add_bos=loaded.add_bos if add_bos is None else add_bos,
                max_length=max_length,
                batch_tokens=batch_tokens,
            )
        self.scorer = scorer

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scores = self.scorer.loglikelihood([r.args for r in requests])
        return [(ll, greedy) for ll, greedy, _ in scores]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [ll for ll, _ in self.scorer.loglikelihood_rolling([r.args[0] for r in requests])]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        reqs = []
        for context, kwargs in (r.args for r in requests):
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
                raise ValueError(f"phi3_jax generates greedily only; got {kwargs}")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            reqs.append((context, until, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))))
        return self.scorer.generate(reqs)


# ----------------------------------------------------------------------------------------------
# Task YAMLs


def rendered_docs(name: str) -> dict[str, list[dict]]:
    """A task's documents rendered in lm-eval style, as lm-eval datasets: split "test", and
    "fewshot" where the task has its own few-shot documents."""
    import datasets

    task = tasks.TASKS[name]

    def render(docs):
        return datasets.Dataset.from_list([_doc_record(task.render(d, "lm_eval")) for d in docs])

    splits = {"test": render(task.load())}
    if task.load_fewshot:
        splits["fewshot"] = render(task.load_fewshot())
    return splits


def _doc_record(doc: prompts.Doc) -> dict:
    return {
        "query": doc.query,
        "choices": list(doc.choices),
        "gold": doc.gold,
        "contexts": list(doc.contexts),
        "continuation": doc.continuation,
        "targets": list(doc.targets),
        "shot_answer": doc.shot_answer,
        "description": doc.description,
    }


def partial_gold(doc: dict) -> int:
    """WinoGrande in lm-eval: doc_to_text gives the gold context's index."""
    return doc["gold"]


def process_generation(task_name: str, doc: dict, results: Sequence[str]) -> dict[str, float]:
    if task_name == "gsm8k":
        return {"exact_match": metrics.gsm8k_match(results[0], doc["targets"][0])}
    return {"exact_match": metrics.triviaqa_match(results[0], doc["targets"])}


def task_yaml(task: tasks.Task) -> dict:
    """The lm-eval task config of one of our tasks (functions named for utils.py)."""
    fewshot_split = "fewshot" if task.load_fewshot else "test"
    config = {
        "task": task.name,
        "custom_dataset": f"!function utils.docs_{task.name}",
        "test_split": "test",
        "fewshot_split": fewshot_split,
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": task.num_fewshot,
        "description": "{{description}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metadata": {"version": 1.0},
    }
    if task.kind == "generation":
        config.update(
            output_type="generate_until",
            doc_to_text="query",
            doc_to_target="shot_answer",
            generation_kwargs={
                "until": list(task.until),
                "max_gen_toks": task.max_gen_toks,
                "do_sample": False,
                "temperature": 0.0,
            },
            process_results=f"!function utils.process_{task.name}",
            metric_list=[
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        )
        return config
    config["output_type"] = "multiple_choice"
    mean = {"aggregation": "mean", "higher_is_better": True}
    if task.kind == "partial":
        config.update(
            doc_to_text="!function utils.partial_gold",
            doc_to_choice="contexts",
            doc_to_target="continuation",
            metric_list=[{"metric": "acc", **mean}],
        )
    else:
        config.update(
            doc_to_text="query",
            doc_to_choice="choices",
            doc_to_target="gold",
            metric_list=[{"metric": "acc", **mean}, {"metric": "acc_norm", **mean}],
        )
    return config


UTILS = '''"""Written by phi3_jax.eval.harness: the documents and metrics of the YAMLs beside it."""
import functools

from phi3_jax.eval import harness


def __getattr__(name):
    if name.startswith("docs_"):
        return lambda **_: harness.rendered_docs(name[len("docs_"):])
    if name.startswith("process_"):
        return functools.partial(harness.process_generation, name[len("process_"):])
    if name == "partial_gold":
        return harness.partial_gold
    raise AttributeError(name)
'''


def _yaml_text(config: dict) -> str:
    # JSON is YAML; the !function tags must stay unquoted.
    lines = []
    for key, value in config.items():
        text = json.dumps(value)
        if isinstance(value, str) and value.startswith("!function "):
            text = value
        lines.append(f"{key}: {text}")
    return "\n".join(lines) + "\n"


def write_task_yamls(out_dir: str) -> list[str]:
    """One YAML per task of tasks.TASKS and the utils.py they call; returns the task names."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "utils.py"), "w") as f:
        f.write(UTILS)
    for task in tasks.TASKS.values():
        with open(os.path.join(out_dir, f"{task.name}.yaml"), "w") as f:
            f.write(_yaml_text(task_yaml(task)))
    with open(os.path.join(out_dir, "mmlu.yaml"), "w") as f:
        f.write(_yaml_text({"group": "mmlu", "task": list(tasks.GROUPS["mmlu"])}))
    return list(tasks.TASKS)


def main(argv: Sequence[str]) -> None:
    if argv[:1] == ["write-tasks"]:
        if len(argv) != 2:
            raise SystemExit("usage: python -m phi3_jax.eval.harness write-tasks DIR")
        names = write_task_yamls(argv[1])
        print(f"wrote {len(names)} task YAMLs to {argv[1]}")
        return
    from lm_eval.__main__ import cli_evaluate

    task_dir = tempfile.mkdtemp(prefix="phi3_jax_tasks.")
    write_task_yamls(task_dir)
    sys.argv = [sys.argv[0], *argv, "--include_path", task_dir]
    cli_evaluate()


if __name__ == "__main__":
    # Run from the importable module, which registers phi3_jax once (utils.py imports it too).
    from phi3_jax.eval import harness

    harness.main(sys.argv[1:])
else:
    register_model("phi3_jax")(Phi3JaxLM)
