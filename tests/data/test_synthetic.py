"""Synthetic documents: byte-identical per seed, and every Python exercise prints what it states."""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest

from phi3_jax.data import synthetic

_EXERCISE = re.compile(r"```python\n(.*?)```.*?Running it prints:\n\n```\n(.*?)```", re.S)


def test_same_seed_same_bytes_other_seed_other_text(tmp_path):
    a = synthetic.write_shards(synthetic.documents(60, seed=3), str(tmp_path / "a"), 25)
    b = synthetic.write_shards(synthetic.documents(60, seed=3), str(tmp_path / "b"), 25)
    assert len(a) == 3
    assert [open(p, "rb").read() for p in a] == [open(p, "rb").read() for p in b]
    other = synthetic.documents(60, seed=4)
    assert [r["text"] for r in other] != [r["text"] for r in synthetic.documents(60, seed=3)]


def test_every_python_exercise_prints_its_stated_output():
    records = [r for r in synthetic.documents(200, seed=0) if r["metadata"]["kind"] == "python"]
    assert len(records) == 50
    for record in records:
        code, stated = _EXERCISE.search(record["text"]).groups()
        # A separate interpreter, so nothing of the generator's own run can leak in.
        ran = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert ran.stdout == stated, record["id"]


def test_all_lesson_kinds_appear_and_a_wrong_answer_is_caught(monkeypatch):
    kinds = {r["metadata"]["kind"] for r in synthetic.documents(8, seed=1)}
    assert kinds == {"arithmetic", "algebra", "python", "definition"}
    monkeypatch.setattr(synthetic, "run_python", lambda code: "something else\n")
    with pytest.raises(synthetic.ExerciseOutputError):
        synthetic.python_lesson(random.Random(0))


def test_a_plugged_in_generator_replaces_the_templates():
    gen = synthetic.load_generator("tests.data.test_synthetic:_echo_generator")
    assert synthetic.documents(2, seed=5, generator=gen)[1] == {
        "id": "synthetic/5/1",
        "text": "document 1",
        "metadata": {"source": "test"},
    }


def _echo_generator(rng: random.Random, index: int) -> dict:
    return {"text": f"document {index}", "metadata": {"source": "test"}}
