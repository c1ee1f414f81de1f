"""launch.report: the arm x metric table equals the runs' own numbers; unfinished runs are marked."""

import json
import os

import numpy as np
import pytest

from launch import report, sweep


def _write_run(root, name, *, steps, losses, evals=None, record=None, last_step=None):
    """A run's files as training and phi3_jax.eval write them."""
    workdir = root / name
    workdir.mkdir(parents=True)
    rec = {"name": name, "steps": steps, "tokens": steps * 512} | (record or {})
    (workdir / sweep.RUN_FILE).write_text(json.dumps(rec))
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(0, (last_step or steps) + 1, steps // 2):
            f.write(
                json.dumps({"step": step, "tokens_seen": step * 512, "loss": losses[step]}) + "\n"
            )
            f.write(
                json.dumps(
                    {"step": step, "tokens_seen": step * 512, "eval_loss": losses[step] + 0.5}
                )
                + "\n"
            )
    for file, results in (evals or {}).items():
        (workdir / file).write_text(json.dumps({"results": results}))
    return workdir


def _results(bpb, acc):
    return {
        "ppl:/somewhere/clean.jsonl.zst": {
            "metrics": {"bits_per_byte": bpb, "token_perplexity": 9.0}
        },
        "arc_easy": {"metrics": {"acc": acc, "logprob": -3.0, "bits_per_byte": bpb + 1}},
    }


def test_report_table_is_the_runs_numbers_with_their_seed_spread(tmp_path):
    files = ["eval_clean.json"]
    for arm, seeds in (("raw", {0: (2.0, 0.25), 1: (2.2, 0.5)}), ("filtered", {0: (1.5, 0.75)})):
        for seed, (bpb, acc) in seeds.items():
            _write_run(
                tmp_path,
                f"{arm}-seed={seed}",
                steps=10,
                losses={0: 10.0, 5: 7.0 + seed, 10: 5.0 + seed + (arm == "raw")},
                evals={"eval_clean.json": _results(bpb, acc)},
                record={"arm": arm, "evaluations": files},
            )
    # An unfinished run (step 5 of 10) and one without its evaluation: listed, not counted.
    _write_run(tmp_path, "raw-seed=2", steps=10, losses={0: 10.0, 5: 1.0}, last_step=5,
               record={"arm": "raw", "evaluations": files})  # fmt: skip
    _write_run(tmp_path, "filtered-seed=1", steps=10, losses={0: 10.0, 5: 1.0, 10: 1.0},
               record={"arm": "filtered", "evaluations": files})  # fmt: skip
    out = report.build(str(tmp_path))

    status = {r["name"]: r["status"] for r in out["runs"]}
    assert status["raw-seed=2"] == "unfinished: step 5/10"
    assert status["filtered-seed=1"] == "unfinished: no eval_clean.json"
    assert [s for n, s in status.items() if s == "finished"] == ["finished"] * 3
    raw, filtered = out["arms"]["raw"], out["arms"]["filtered"]
    assert raw["train_loss"]["values"] == [6.0, 7.0]  # final losses of seeds 0 and 1
    assert raw["train_loss"]["mean"] == pytest.approx(6.5)
    assert raw["train_loss"]["std"] == pytest.approx(np.std([6.0, 7.0], ddof=1))
    assert raw["eval_loss"]["min"] == 6.5 and raw["eval_loss"]["max"] == 7.5
    assert raw["ppl:clean/bits_per_byte"]["values"] == [2.0, 2.2]
    assert raw["arc_easy/acc"]["mean"] == pytest.approx(0.375)
    assert filtered["ppl:clean/bits_per_byte"] == {
        "mean": 1.5, "std": 0.0, "min": 1.5, "max": 1.5, "n": 1, "values": [1.5]
    }  # fmt: skip
    # Metrics outside the table's list are in each run's record, not in the table.
    assert "ppl:clean/token_perplexity" not in raw
    assert out["scaling"] is None  # one model size
    md = (tmp_path / report.REPORT_MD).read_text()
    # Arms in the order of their run folders (sorted): filtered, raw.
    assert "| ppl:clean/bits_per_byte | 1.5000 | 2.1000 ± 0.1414 (2.0000–2.2000) |" in md
    assert "| raw-seed=2 | raw | unfinished: step 5/10 | 10 | 5120 |" in md
    assert json.loads((tmp_path / report.REPORT_JSON).read_text())["arms"] == out["arms"]
    assert os.path.getsize(tmp_path / report.REPORT_PNG) > 10_000


def test_report_of_an_empty_root_is_an_error(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err
