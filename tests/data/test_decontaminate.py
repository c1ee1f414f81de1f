"""prepare --decontaminate: training documents holding a benchmark question or answer (13 words
or more of it) are removed and counted under their task; everything else is kept, including a
document that shares only 12 consecutive words with a question."""

from __future__ import annotations

import pytest

from phi3_jax.data import decontaminate, prepare
from phi3_jax.data.readers import iter_documents
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.eval import tasks
from tests.data.test_prepare import GOOD, QUALITY_MODEL


def _pairs(name: str) -> list[tuple[str, str]]:
    return list(decontaminate.question_answer_pairs(tasks.resolve([name])[0]))


def _question(query: str) -> str:
    """The bare question of an lm-eval `Question: ...\\nAnswer:` prompt."""
    return query.removeprefix("Question: ").removesuffix("\nAnswer:")


def test_planted_benchmark_text_is_removed_and_nothing_else(tmp_path):
    arc, piqa = _pairs("arc_easy"), _pairs("piqa")
    arc_question = _question(arc[1][0])  # 20 words
    piqa_answer = piqa[0][1]  # a 35-word gold solution
    near_miss = " ".join(_question(piqa[68][0]).split()[:12])  # 12 words of a 24-word question
    assert len(arc_question.split()) >= 13
    records = [
        {"id": "clean/0", "text": GOOD[0]},
        {"id": "clean/1", "text": GOOD[1]},
        {"id": "near_miss", "text": GOOD[2] + "\n" + near_miss + " is a question people ask."},
        # The question copied into a page without its answer, and in the benchmark's own form.
        {"id": "arc/question", "text": GOOD[0] + "\nQuiz: " + arc_question + " Think first."},
        {"id": "arc/prompt", "text": GOOD[1] + "\n" + arc[1][0] + " " + arc[1][1] + "\n"},
        {"id": "piqa/answer", "text": GOOD[2] + "\nTip: " + piqa_answer},
    ]
    write_jsonl_zst(records, str(tmp_path / "in" / "web.jsonl.zst"))
    out = str(tmp_path / "out")
    result = prepare.run(
        str(tmp_path / "in" / "*.jsonl.zst"),
        out,
        QUALITY_MODEL,
        workers=1,
        decontaminate=["arc_easy", "piqa"],
    )
    kept = sorted(d.id for d in iter_documents(f"{out}/phase1/*.jsonl.zst"))
    assert kept == ["clean/0", "clean/1", "near_miss"]
    report = result["decontamination"]
    assert report["n_grams"] == 13 and report["removed"] == 3
    assert report["tasks"]["arc_easy"]["removed"] == 2
    assert report["tasks"]["piqa"]["removed"] == 1
    assert report["tasks"]["arc_easy"]["pairs"] == len(arc)
    assert report["tasks"]["piqa"]["hashes"] > 0
    assert result["settings"]["decontaminate"] == ["arc_easy", "piqa"]


def test_an_unknown_task_is_an_error_naming_it(tmp_path):
    write_jsonl_zst([{"id": "a", "text": GOOD[0]}], str(tmp_path / "in" / "web.jsonl.zst"))
    with pytest.raises(tasks.TaskError, match="'arc_hard'"):
        prepare.run(
            str(tmp_path / "in" / "*.jsonl.zst"),
            str(tmp_path / "out"),
            QUALITY_MODEL,
            decontaminate=["arc_hard"],
        )
