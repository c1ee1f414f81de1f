"""The lm-eval backend and task YAMLs: lm-eval builds from our YAMLs exactly the requests that
phi3_jax.eval builds, and lm-eval's own evaluation with the `phi3_jax` model gives the same
per-request results and metrics as with its `hf` backend on the same tiny Phi-3."""

from __future__ import annotations

import pytest
from eval_fixtures import save_tiny_hf
from test_reference import TOL, _ours, _theirs

from phi3_jax.eval import harness, runner, tasks

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

NAMES = [
    "arc_easy",
    "mmlu_anatomy",
    "hellaswag",
    "winogrande",
    "copa",
    "boolq",
    "commonsense_qa",
    "social_iqa",
    "sciq",
    "piqa",
    "openbookqa",
    "gsm8k",
    "triviaqa",
]


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    return TaskManager(include_path=harness_dir(tmp_path_factory))


def harness_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("harness_tasks"))
    harness.write_task_yamls(out)
    return out


def _lm_eval_args(task) -> list:
    task.build_all_requests(limit=3, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst.args)
    return [by_doc[k] for k in sorted(by_doc)]


def test_lm_eval_builds_our_requests(task_manager):
    loaded = task_manager.load_task_or_group(NAMES)
    for name in NAMES:
        theirs = _lm_eval_args(loaded[name])
        mine = []
        for inst in tasks.build(tasks.TASKS[name], "lm_eval", limit=3):
            if tasks.TASKS[name].kind == "generation":
                r = inst.requests[0]
                mine.append([r.context])
            else:
                mine.append([(r.context, r.continuation) for r in inst.requests])
        if tasks.TASKS[name].kind == "generation":
            theirs = [[args[0][0]] for args in theirs]
        assert theirs == mine, name


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_hf(str(tmp_path_factory.mktemp("tiny_hf")))


def _evaluate(model, names, task_manager, limit):
    return lm_eval.simple_evaluate(
        model=model,
        tasks=names,
        limit=limit,
        task_manager=task_manager,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def _check(tiny_hf, task_manager, names, limit, max_length):
    ours = _ours(tiny_hf, max_length)
    mine = _evaluate(harness.Phi3JaxLM(scorer=ours), names, task_manager, limit)
    theirs = _evaluate(_theirs(tiny_hf, max_length), names, task_manager, limit)
    worst = 0.0
    for name in names:
        a, b = mine["samples"][name], theirs["samples"][name]
        assert [s["doc_id"] for s in a] == [s["doc_id"] for s in b]
        for x, y in zip(a, b, strict=True):
            for rx, ry in zip(x["resps"], y["resps"], strict=True):
                if isinstance(rx[0], tuple):  # (loglikelihood, is_greedy)
                    worst = max(worst, abs(rx[0][0] - ry[0][0]))
                    assert rx[0][1] == ry[0][1], name
                else:
                    assert rx == ry, name  # generations identical
        for key, value in mine["results"][name].items():
            if key.startswith(("acc", "exact_match")) and "stderr" not in key:
                assert value == theirs["results"][name][key], (name, key)
    assert worst <= TOL
    # phi3_jax.eval's own runner gives lm-eval's metrics on the same documents.
    compared = 0
    for result in runner.evaluate(ours, names, limit=limit):
        for key in ("acc", "acc_norm", "exact_match"):
            if key in result.metrics and f"{key},none" in mine["results"][result.name]:
                assert result.metrics[key] == mine["results"][result.name][f"{key},none"]
                compared += 1
    assert compared >= len(names)
    return worst


def test_lm_eval_with_phi3_jax_equals_lm_eval_with_hf(tiny_hf, task_manager):
    _check(tiny_hf, task_manager, ["arc_easy", "winogrande", "triviaqa"], 4, 384)


@pytest.mark.slow
def test_lm_eval_with_phi3_jax_equals_lm_eval_with_hf_hundreds(tiny_hf, task_manager):
    _check(tiny_hf, task_manager, ["arc_easy", "winogrande", "boolq", "commonsense_qa"], 75, 512)
    _check(tiny_hf, task_manager, ["gsm8k", "triviaqa"], 40, 512)
