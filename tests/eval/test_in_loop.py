"""eval.tasks in the training loop: scored at each evaluation beside the held-out loss (stdout,
metrics.jsonl), drawn by phi3_jax.plot; then the run's checkpoint through the eval CLI."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "train"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "model"))
import pytest  # noqa: E402
from cli_fixtures import run_module  # noqa: E402
from eval_fixtures import save_tiny_hf  # noqa: E402
from test_loop import run  # noqa: E402

from phi3_jax import config as config_lib
from phi3_jax import metrics, plot  # noqa: E402
from phi3_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from phi3_jax.eval import in_loop, runner, scorer, tasks  # noqa: E402
from phi3_jax.model import hf  # noqa: E402


def test_in_loop_scores_equal_the_runner(tmp_path):
    path = save_tiny_hf(str(tmp_path / "tiny_hf"))
    config, params = hf.load_hf(path)
    config = config_lib.replace(
        config, model=dict(dtype="float32"), eval=dict(tasks="copa, winogrande", task_limit=3)
    )
    tok = tokenizer_lib.load("hf", path)
    score = in_loop.make(config, tok, log=None)
    got = score(params)
    ours = scorer.Scorer(config, params, tok, add_bos=config.data.add_bos, log=None)
    want = {
        f"eval_tasks/{r.name}/{k}": v
        for r in runner.evaluate(ours, ["copa", "winogrande"], limit=3)
        for k, v in r.metrics.items()
    }
    assert got == want
    assert "copa/acc " in in_loop.line(0, got)
    with pytest.raises(tasks.TaskError, match="unknown task 'nope'"):
        in_loop.make(config_lib.replace(config, eval=dict(tasks="copa,nope")), tok)
    assert in_loop.make(config_lib.replace(config, eval=dict(tasks="")), tok) is None


@pytest.mark.slow
def test_loop_scores_eval_tasks_and_the_cli_reads_the_run(tmp_path):
    workdir = tmp_path / "run"
    result = run(
        workdir,
        **{
            "train.steps": 4,
            "eval.every_steps": 4,
            "eval.tasks": "copa,arc_easy",
            "eval.task_limit": 2,
            "checkpoint.every_steps": 4,
        },
    )
    task_lines = [line for line in result.stdout.splitlines() if "| tasks: " in line]
    assert len(task_lines) == 2 and "copa/acc " in task_lines[0], result.stdout[-2000:]
    scored = [line for line in metrics.read_metrics(str(workdir)) if "eval_tasks/copa/acc" in line]
    assert [line["step"] for line in scored] == [0, 4]
    assert all("eval_loss" in line and 0 <= line["eval_tasks/arc_easy/acc"] <= 1 for line in scored)
    plot.plot(str(workdir))
    assert os.path.getsize(workdir / plot.TASKS_FILE) > 0

    out = tmp_path / "results.json"
    proc = run_module(
        "phi3_jax.eval", f"--workdir={workdir}", "--tasks=copa", "--limit=2", f"--output={out}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert saved["source"]["step"] == 4 and saved["settings"]["add_bos"] is True
    # The CLI scores in float32, the loop in the run's bfloat16: the same accuracy on 2 docs is
    # not guaranteed, the same documents and metric names are.
    assert set(saved["results"]["copa"]["metrics"]) == {
        k.split("/")[2] for k in scored[-1] if k.startswith("eval_tasks/copa/")
    }

    # The run's checkpoint exported with `convert orbax-to-hf` is the reference's model: our
    # scorer on the run (its tokenizer, float32) equals lm-eval's hf backend on the export.
    from lm_eval.models import huggingface as lm_eval_hf
    from test_reference import TOL, _choice_requests, _instances

    from phi3_jax import convert
    from phi3_jax.eval import source

    export = str(tmp_path / "export")
    convert.orbax_to_hf(str(workdir), export)
    loaded = source.load(workdir=str(workdir))
    config = config_lib.replace(loaded.config, model=dict(dtype="float32"))
    ours = scorer.Scorer(config, loaded.params, loaded.tokenizer, add_bos=True, log=None)
    _, pairs = _choice_requests(["copa", "arc_easy"], 3, 1)
    mine = ours.loglikelihood(pairs)
    # The run trains with BOS first (data.add_bos): lm-eval's add_bos_token.
    hf_lm = lm_eval_hf.HFLM(
        pretrained=export, device="cpu", dtype="float32", batch_size=8, add_bos_token=True
    )
    theirs = hf_lm.loglikelihood(_instances("loglikelihood", pairs))
    assert [m[1] for m in mine] == [t[1] for t in theirs]
    assert max(abs(m[0] - t[0]) for m, t in zip(mine, theirs, strict=True)) <= TOL
