"""The bundled post-training sets, built from the synthetic lessons' questions and answers.

Each arithmetic, algebra and definition lesson of `data/synthetic` (phi3_jax.data.synthetic) gives
a question and its answer: an SFT conversation {"messages": [user, assistant]} and a preference
pair {"prompt", "chosen", "rejected"} whose rejected answer is the chosen one with its final number
changed (a wrong result in a right-looking answer). Deterministic from the shards and the seed.

    python -m phi3_jax.posttrain.demo_data --synthetic=GLOB --out=DIR [--seed=0]
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Iterator, Sequence

from phi3_jax.data.shards import write_jsonl_zst

# The question and answer of each lesson kind, from the text synthetic.py writes.
_QA_PATTERNS = {
    "arithmetic": re.compile(r"\*\*Problem\.\*\* (?P<q>.+?)\n\n\*\*Solution\.\*\* (?P<a>.+?)\n"),
    "algebra": re.compile(
        r"such as (?P<eq>.+?) is solved.*?\*\*Step 1\.\*\* (?P<s1>.+?)\n\n"
        r"\*\*Step 2\.\*\* (?P<s2>.+?)\n",
        re.DOTALL,
    ),
    "definition": re.compile(r"# Definition: (?P<term>.+?)\n\n(?P<a>.+?)\n"),
}
_NUMBER = re.compile(r"-?\d+")


def question_and_answer(kind: str, text: str) -> tuple[str, str] | None:
    """(question, answer) of a lesson, None for kinds without one (the Python exercises)."""
    pattern = _QA_PATTERNS.get(kind)
    match = pattern.search(text) if pattern else None
    if match is None:
        return None
    if kind == "algebra":
        return f"Solve {match['eq']}.", f"{match['s1']} {match['s2']}"
    if kind == "definition":
        article = "an" if match["term"][0] in "aeiou" else "a"
        return f"What is {article} {match['term']}?", match["a"]
    return match["q"], match["a"]


def corrupted(answer: str, rng: random.Random) -> str | None:
    """The answer with its last number replaced by another (None if it has no number)."""
    numbers = list(_NUMBER.finditer(answer))
    if not numbers:
        return None
    last = numbers[-1]
    wrong = int(last.group()) + rng.choice((-3, -2, -1, 1, 2, 3))
    return answer[: last.start()] + str(wrong) + answer[last.end() :]


def lessons(patterns: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of every synthetic lesson in the shards."""
    from phi3_jax.data.readers import iter_documents

    for doc in iter_documents(patterns):
        yield doc.metadata["kind"], doc.text


def build(patterns: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(SFT conversations, preference pairs) of the lessons in the shards."""
    rng = random.Random(seed)
    conversations, pairs = [], []
    for kind, text in lessons(patterns):
        qa = question_and_answer(kind, text)
        if qa is None:
            continue
        question, answer = qa
        conversations.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        wrong = corrupted(answer, rng)
        if wrong is not None:
            pairs.append({"prompt": question, "chosen": answer, "rejected": wrong})
    return conversations, pairs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.posttrain.demo_data")
    parser.add_argument("--synthetic", default="data/synthetic/*.jsonl.zst", help="lesson shards")
    parser.add_argument("--out", default="data/chat", help="writes sft.jsonl.zst, dpo.jsonl.zst")
    parser.add_argument("--seed", type=int, default=0, help="seeds the corruptions")
    args = parser.parse_args(argv)
    conversations, pairs = build(args.synthetic, args.seed)
    n_sft = write_jsonl_zst(conversations, f"{args.out}/sft.jsonl.zst")
    n_dpo = write_jsonl_zst(pairs, f"{args.out}/dpo.jsonl.zst")
    print(f"wrote {args.out}: {n_sft} conversations, {n_dpo} preference pairs")


if __name__ == "__main__":
    main()
