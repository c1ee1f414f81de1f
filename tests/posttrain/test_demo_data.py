"""The bundled post-training sets from the synthetic lessons: each lesson kind's question and
answer (none for the Python exercises), a rejected answer differing from the chosen one only in
its last number, and the sets built deterministically from lesson shards."""

from __future__ import annotations

import random
import re

from phi3_jax.data import synthetic
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.posttrain import demo_data


def test_each_lesson_kind_gives_its_question_and_answer():
    rng = random.Random(1)
    kind, text = synthetic.equation_lesson(rng)
    question, answer = demo_data.question_and_answer(kind, text)
    assert kind == "algebra" and re.fullmatch(r"Solve \d+x . \d+ = -?\d+\.", question)
    first, second = answer.split(". ", 1)
    assert f"**Step 1.** {first}." in text and f"**Step 2.** {second}" in text
    kind, text = synthetic.arithmetic_lesson(rng)
    question, answer = demo_data.question_and_answer(kind, text)
    assert question.startswith("A shop sells one ") and question.endswith(" get?")
    assert f"**Problem.** {question}" in text and f"**Solution.** {answer}" in text
    assert demo_data.question_and_answer(*synthetic.python_lesson(rng)) is None


def test_a_rejected_answer_changes_only_its_last_number():
    rng = random.Random(0)
    answer = "4 × $6 = $24, so $40 − $24 = $16."
    wrong = demo_data.corrupted(answer, rng)
    assert wrong.startswith("4 × $6 = $24, so $40 − $24 = $") and wrong.endswith(".")
    assert wrong != answer and abs(int(wrong[-3:-1]) - 16) <= 3
    assert demo_data.corrupted("no number here", rng) is None


def test_the_sets_are_deterministic_from_the_shards(tmp_path):
    docs = synthetic.documents(12, seed=3)
    write_jsonl_zst(docs, str(tmp_path / "lessons.jsonl.zst"))
    conversations, pairs = demo_data.build(str(tmp_path / "*.jsonl.zst"), seed=5)
    assert (conversations, pairs) == demo_data.build(str(tmp_path / "*.jsonl.zst"), seed=5)
    with_answers = [d for d in docs if d["metadata"]["kind"] != "python"]
    assert len(conversations) == len(with_answers) > 0
    answers = {}
    for chat in conversations:
        user, assistant = chat["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        answers[user["content"]] = assistant["content"]
    # A pair for each answer with a number (a definition may have none), its chosen the answer.
    assert 0 < len(pairs) <= len(conversations)
    for pair in pairs:
        assert pair["chosen"] == answers[pair["prompt"]] != pair["rejected"]
