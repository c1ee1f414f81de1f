"""launch.ablation: arms that differ only in their data, a clean set no arm trains on, and the
whole command end to end (2 arms, 1 seed, a few steps) with the report checked against the runs."""

import json
import subprocess
import sys

import pytest

from configs.ablations import data_quality
from launch import ablation, report, sweep

ABLATION = "configs/ablations/data_quality.py"


def _configs(runs):
    return {run["name"]: sweep.load_config(run["config"], run["overrides"]) for run in runs}


def test_arms_differ_only_in_their_data(tmp_path):
    runs = ablation.ablation_runs(data_quality, str(tmp_path))
    assert [r["name"] for r in runs] == [
        f"{arm}-seed={seed}" for arm in data_quality.ARMS for seed in data_quality.SEEDS
    ]
    configs = {name: c.to_dict() for name, c in _configs(runs).items()}
    reference = configs["raw-seed=0"]
    for name, config in configs.items():
        arm, seed = name.split("-seed=")
        assert config["data"]["sources"]["web"]["globs"] == str(tmp_path / f"{arm}.jsonl.zst")
        assert config["data"]["phase1"] == data_quality.ARMS[arm]["mixture"]
        assert config["train"]["seed"] == config["data"]["seed"] == int(seed)
        for section in config:
            if section not in ("data", "train"):
                assert config[section] == reference[section], (name, section)
        same = {k: v for k, v in config["train"].items() if k != "seed"}
        assert same == {k: v for k, v in reference["train"].items() if k != "seed"}
        data = {k: v for k, v in config["data"].items() if k not in ("sources", "phase1", "seed")}
        assert data == {
            k: v for k, v in reference["data"].items() if k not in ("sources", "phase1", "seed")
        }
        assert config["data"]["phase2"] == {}


def test_no_arm_trains_on_the_clean_set(tmp_path):
    counts = ablation.prepare_data(data_quality, str(tmp_path))
    clean = ablation.read_records(str(tmp_path / ablation.CLEAN_FILE))
    assert len(clean) >= 10
    clean_ids, clean_texts = {r["id"] for r in clean}, {r["text"] for r in clean}
    for arm, spec in data_quality.ARMS.items():
        kept = ablation.read_records(str(tmp_path / f"{arm}.jsonl.zst"))
        original = ablation.read_records(spec["web"])
        assert not clean_ids & {r["id"] for r in kept}
        assert not clean_texts & {r["text"] for r in kept}
        # Only the clean documents went: every other one is there, unchanged.
        assert kept == [r for r in original if r["id"] not in clean_ids]
        assert counts[arm] == {"documents": len(kept), "removed": len(original) - len(kept)}
        assert counts[arm]["removed"] == len(clean)  # each clean page is in every arm's source


def test_dry_run_prints_train_eval_and_report_commands_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.ablation", ABLATION, "--launcher=slurm",
         f"--workdir_root={tmp_path}", "--dry_run", "--", "--nodes=1"],
        capture_output=True, text=True, check=True, cwd=sweep.ROOT,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    runs = len(data_quality.ARMS) * len(data_quality.SEEDS)
    assert len(lines) == 3 * runs + 1
    assert lines[0].startswith("sbatch --nodes=1 launch/slurm.sbatch ")
    assert "--tasks=ppl:" in lines[1] and "--tasks=arc_easy,piqa,sciq" in lines[2]
    assert lines[-1].endswith(f"-m launch.report {tmp_path}/data_quality")
    assert list(tmp_path.iterdir()) == []


TINY_ABLATION = """
from configs.ablations import data_quality as base

ARMS = {arm: base.ARMS[arm] for arm in ("raw", "filtered")}
CLEAN, CLEAN_FRACTION = base.CLEAN, base.CLEAN_FRACTION
TASKS, TASK_LIMIT, NUM_FEWSHOT = ("arc_easy",), 4, 0


def get_config(arm):
    config = base.get_config(arm)
    config.train.update(steps=3, global_batch_size=4, seq_len=32)
    config.optim.warmup_steps = 1
    config.data.phase2_start_step = 3
    config.log.every_steps = 1
    config.eval.every_steps = 3
    config.checkpoint.every_steps = 3
    return config


def runs():
    return [dict(name=f"{arm}-seed=0", config=f"{__file__}:{arm}",
                 overrides={"train.seed": 0, "data.seed": 0}) for arm in ARMS]
"""


@pytest.mark.slow
def test_a_two_arm_ablation_ends_in_a_report_of_its_runs_numbers(tmp_path):
    path = tmp_path / "tiny_ablation.py"
    path.write_text(TINY_ABLATION)
    result = subprocess.run(
        [sys.executable, "-m", "launch.ablation", str(path), "--launcher=local",
         f"--workdir_root={tmp_path / 'runs'}", "--", "--devices_per_process=1"],
        capture_output=True, text=True, timeout=1200, cwd=sweep.ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "runs" / "tiny_ablation"
    out = json.loads((root / report.REPORT_JSON).read_text())
    assert [r["status"] for r in out["runs"]] == ["finished", "finished"]
    assert list(out["arms"]) == ["filtered", "raw"]
    for arm in ("raw", "filtered"):
        workdir = root / f"{arm}-seed=0"
        lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        train = [line for line in lines if "loss" in line]
        evals = [line for line in lines if "eval_loss" in line]
        clean = json.loads((workdir / ablation.EVAL_CLEAN).read_text())["results"]
        tasks = json.loads((workdir / ablation.EVAL_TASKS).read_text())["results"]
        (clean_result,) = clean.values()
        cells = out["arms"][arm]
        assert train[-1]["step"] == 3
        assert cells["train_loss"]["values"] == [train[-1]["loss"]]
        assert cells["eval_loss"]["values"] == [evals[-1]["eval_loss"]]
        bpb = clean_result["metrics"]["bits_per_byte"]
        assert cells["ppl:clean/bits_per_byte"] == {
            "mean": bpb, "std": 0.0, "min": bpb, "max": bpb, "n": 1, "values": [bpb]
        }  # fmt: skip
        for metric in ("acc", "logprob", "bits_per_byte"):
            assert cells[f"arc_easy/{metric}"]["mean"] == tasks["arc_easy"]["metrics"][metric]
        assert tasks["arc_easy"]["settings"]["documents"] == 4
        # The arm trained on its own decontaminated shards.
        record = json.loads((workdir / sweep.RUN_FILE).read_text())
        web = record["overrides"]["data.sources.web.globs"]
        assert web == str(root / "data" / f"{arm}.jsonl.zst")
    md = (root / report.REPORT_MD).read_text()
    assert (
        "| ppl:clean/bits_per_byte |" in md and (root / report.REPORT_PNG).stat().st_size > 10_000
    )
