"""`python -m phi3_jax.eval` and `python -m phi3_jax.eval.harness` end to end on the tiny HF
Phi-3: the table, the JSON (metrics, settings, samples), counted truncation, one-line errors."""

from __future__ import annotations

import json
import os
import sys

import pytest
from eval_fixtures import save_tiny_hf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "model"))
from cli_fixtures import run_module  # noqa: E402


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_hf(str(tmp_path_factory.mktemp("tiny_hf")))


def test_eval_cli_writes_table_and_json(tiny_hf, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": "word " * n}) for n in (40, 700)))
    out = tmp_path / "results.json"
    proc = run_module(
        "phi3_jax.eval",
        f"--hf_dir={tiny_hf}",
        f"--tasks=copa,arc_easy,ppl:{texts}",
        "--limit=2",
        f"--output={out}",
        "--log_samples",
        "--style=report",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| copa | 5 | 2 | acc |" in proc.stdout
    results = json.loads(out.read_text())
    assert results["source"] == {"hf_dir": tiny_hf}
    assert set(results["results"]) == {"copa", "arc_easy", f"ppl:{texts}"}
    copa = results["results"]["copa"]
    assert copa["settings"]["style"] == "report" and copa["settings"]["documents"] == 2
    assert len(copa["samples"]) == 2 and len(copa["samples"][0]["loglikelihood"]) == 2
    ppl = results["results"][f"ppl:{texts}"]
    assert ppl["settings"]["tokens"] > 512  # the long text took two windows
    assert ppl["metrics"]["bits_per_byte"] > 0
    # 10-shot ARC contexts overflow the 512-token window: left-truncated and counted.
    per_task = [r["settings"].get("truncated", 0) for r in results["results"].values()]
    assert results["results"]["arc_easy"]["settings"]["truncated"] > 0
    assert results["truncated"] == sum(per_task)


def known_tasks() -> str:
    from phi3_jax.eval import tasks

    return ", ".join(["mmlu", *(n for n in tasks.TASKS if not n.startswith("mmlu_"))])


def test_eval_cli_bad_input_is_one_line(tiny_hf, tmp_path):
    proc = run_module("phi3_jax.eval", f"--hf_dir={tiny_hf}", "--tasks=arc_eazy")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"phi3_jax.eval: unknown task 'arc_eazy' (known: {known_tasks()}, mmlu_<subject>)"
    ]
    # A run without checkpoints: one line naming it.
    proc = run_module("phi3_jax.eval", f"--workdir={tmp_path}", "--tasks=copa")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and str(tmp_path) in lines[0]


@pytest.mark.slow
def test_harness_cli_runs_lm_eval_with_phi3_jax(tiny_hf, tmp_path):
    proc = run_module(
        "phi3_jax.eval.harness",
        "--model",
        "phi3_jax",
        "--model_args",
        f"hf_dir={tiny_hf}",
        "--tasks",
        "copa,winogrande",
        "--limit",
        "3",
        "--output_path",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "copa" in proc.stdout and "winogrande" in proc.stdout
