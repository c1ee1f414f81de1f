"""The two prompt styles on hand-made documents: lm-eval's per-task prompt scoring the option
texts (or letters where its YAML lists them), the Phi-3 report's Question/Options/Answer scoring
letters, WinoGrande's blank filled in both, and the few-shot context's layout."""

from __future__ import annotations

from phi3_jax.eval import prompts

ARC = {
    "question": "Which is a gas?",
    "choices": {"label": ["A", "B", "C"], "text": ["ice", "steam", "rock"]},
    "answerKey": "B",
}


def test_arc_in_both_styles():
    ours = prompts.arc(ARC, "lm_eval")
    assert ours == prompts.Doc(
        query="Question: Which is a gas?\nAnswer:", choices=("ice", "steam", "rock"), gold=1
    )
    report = prompts.arc(ARC, "report")
    assert report.query == (
        "Question: Which is a gas?\nOptions:\nA. ice\nB. steam\nC. rock\nAnswer:"
    )
    assert (report.choices, report.gold) == (("A", "B", "C"), 1)


def test_mmlu_lists_its_options_and_describes_the_subject():
    doc = {"question": " 2 + 2? ", "choices": ["3", "4"], "answer": 1, "subject": "high_school_x"}
    ours = prompts.mmlu(doc, "lm_eval")
    assert ours.query == "2 + 2?\nA. 3\nB. 4\nAnswer:"
    assert (ours.choices, ours.gold) == (("A", "B"), 1)
    assert ours.description.startswith("The following are multiple choice questions")
    assert ours.description.endswith("about high school x.\n\n")
    assert prompts.mmlu(doc, "report").query == prompts.report_prompt("2 + 2?", ["3", "4"])


def test_winogrande_fills_the_blank_and_scores_the_rest():
    doc = {
        "sentence": "Tom lent Sam _ car because he was kind.",
        "option1": "Tom",
        "option2": "his",
    }
    doc["answer"] = "1"
    for style in prompts.STYLES:
        got = prompts.winogrande(doc, style)
        assert got.contexts == ("Tom lent Sam Tom", "Tom lent Sam his")
        assert (got.continuation, got.gold) == ("car because he was kind.", 0)


def test_generation_targets_and_the_few_shot_context():
    doc = {"question": "Q1", "answer": {"aliases": ["x", "X"], "value": "x"}}
    trivia = prompts.triviaqa(doc, "lm_eval")
    assert (trivia.query, trivia.targets) == ("Question: Q1?\nAnswer:", ("x", "X"))
    assert prompts.triviaqa(doc, "report").query == "Question: Q1\nAnswer:"
    math = prompts.gsm8k({"question": "1+1?", "answer": "2", "cot": "1+1=2."}, "lm_eval")
    shots = [prompts.arc(ARC, "lm_eval"), trivia, math]
    assert [prompts.shot_text(s) for s in shots] == [
        "Question: Which is a gas?\nAnswer: steam",
        "Question: Q1?\nAnswer: x",
        "Q: 1+1?\nA: 1+1=2.",
    ]
    prefix = prompts.fewshot_prefix(shots[:2], "Intro.\n\n")
    assert prefix == (
        "Intro.\n\nQuestion: Which is a gas?\nAnswer: steam\n\nQuestion: Q1?\nAnswer: x\n\n"
    )
    assert prompts.fewshot_prefix([], "") == ""
