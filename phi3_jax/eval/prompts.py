"""Prompt formats: a benchmark document rendered as a `Doc` in either prompt style, and the
few-shot context in front of it.

Prompt styles: `lm_eval` is lm-eval-harness's standard prompt per task (its task YAMLs); `report`
is the Phi-3 report's (`Question:` ... `Options:` / `A.` ... `Answer:`, scoring the letter).
The context is lm-eval's: the description, the shots (each its query, a space and its answer)
joined by a blank line, a blank line, the query. Each renderer takes one raw document of its
dataset (`phi3_jax.eval.tasks` says which) and the style.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence

STYLES = ("lm_eval", "report")
LETTERS = string.ascii_uppercase


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


# ----------------------------------------------------------------------------------------------
# Renderers, one per benchmark


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


def arc(doc: dict, style: str) -> Doc:
    q, c = doc["question"], doc["choices"]
    gold = _letter_index(c["label"], doc["answerKey"])
    return _mc(style, f"Question: {q}\nAnswer:", q, c["text"], gold)


def openbookqa(doc: dict, style: str) -> Doc:
    q, c = doc["question_stem"], doc["choices"]
    return _mc(style, q, q, c["text"], _letter_index(c["label"], doc["answerKey"]))


def _hellaswag_clean(text: str) -> str:
    # lm-eval's preprocessing: WikiHow's bracketed artifacts out, double spaces collapsed.
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(doc: dict, style: str) -> Doc:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_clean(doc["activity_label"] + ": " + ctx)
    endings = [_hellaswag_clean(e) for e in doc["endings"]]
    return _mc(style, query, f"{query} ...", endings, int(doc["label"]))


def piqa(doc: dict, style: str) -> Doc:
    q = doc["goal"]
    return _mc(style, f"Question: {q}\nAnswer:", q, [doc["sol1"], doc["sol2"]], int(doc["label"]))


def boolq(doc: dict, style: str) -> Doc:
    q = f"{doc['question']}?"
    gold = int(bool(doc["answer"]))
    return _mc(
        style,
        f"{doc['passage']}\nQuestion: {q}\nAnswer:",
        f"{doc['passage']}\n{q}",
        ["no", "yes"],
        gold,
    )


def siqa(doc: dict, style: str) -> Doc:
    options = [doc["answerA"], doc["answerB"], doc["answerC"]]
    q = f"{doc['context']} {doc['question']}"
    return _mc(style, f"Q: {q}\nA:", q, options, int(doc["label"]) - 1)


def csqa(doc: dict, style: str) -> Doc:
    q, c = doc["question"].strip(), doc["choices"]
    gold = _letter_index(c["label"], doc["answerKey"])
    if style == "report":
        return _mc(style, "", q, c["text"], gold)
    # lm-eval's commonsense_qa lists the options and scores their letters.
    listed = "\n".join(f"{LETTERS[i]}. {t}" for i, t in enumerate(c["text"]))
    return Doc(query=f"Question: {q}\n{listed}\nAnswer:", choices=tuple(c["label"]), gold=gold)


def sciq(doc: dict, style: str) -> Doc:
    q = doc["question"]
    options = [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]
    support = doc["support"].lstrip()
    return _mc(style, f"{support}\nQuestion: {q}\nAnswer:", f"{support}\n{q}".strip(), options, 3)


def copa(doc: dict, style: str) -> Doc:
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    options = [c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]
    premise = doc["premise"].strip()
    question = f"{premise} What was the {doc['question']}?"
    return _mc(style, f"{premise[:-1]} {connector}", question, options, int(doc["label"]))


def mmlu(doc: dict, style: str) -> Doc:
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


def winogrande(doc: dict, style: str) -> Doc:
    # Partial scoring (both styles): the option fills the blank; the rest is what is scored.
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + o for o in (doc["option1"], doc["option2"]))
    return Doc(
        contexts=contexts,
        continuation=sentence[blank + 1 :].strip(),
        gold=int(doc["answer"]) - 1,
    )


def triviaqa(doc: dict, style: str) -> Doc:
    q, aliases = doc["question"], tuple(doc["answer"]["aliases"])
    query = f"Question: {q}?\nAnswer:" if style == "lm_eval" else f"Question: {q}\nAnswer:"
    return Doc(query=query, targets=aliases, shot_answer=doc["answer"]["value"])


def gsm8k(doc: dict, style: str) -> Doc:
    q, answer = doc["question"], doc["answer"]
    if style == "lm_eval":
        return Doc(query=f"Q: {q}\nA:", targets=(answer,), shot_answer=doc["cot"])
    return Doc(query=f"Question: {q}\nAnswer:", targets=(answer,), shot_answer=doc["cot"])


# ----------------------------------------------------------------------------------------------
# The few-shot context


def shot_text(doc: Doc) -> str:
    """A document as a shot: its query (or gold context), a space, its answer."""
    if doc.contexts:
        return f"{doc.contexts[doc.gold]} {doc.continuation}"
    answer = doc.shot_answer if doc.targets else doc.choices[doc.gold]
    return f"{doc.query} {answer}"


def fewshot_prefix(shots: Sequence[Doc], description: str) -> str:
    """The description and the shots, each followed by a blank line (lm-eval's layout)."""
    return description + "".join(shot_text(s) + "\n\n" for s in shots)
