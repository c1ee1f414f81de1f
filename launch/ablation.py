"""`python -m launch.ablation configs/ablations/data_quality.py --launcher=local|tpu_vm|slurm
[--workdir_root=DIR|gs://BUCKET/DIR] [--dry_run] [-- LAUNCHER_ARGS]`

An ablation file is a sweep file (its `runs()`, expanded and launched by launch/sweep.py) that also
names its `ARMS` (each with the `web` shards it trains on), a `CLEAN` set, `CLEAN_FRACTION`,
`TASKS`, `TASK_LIMIT` and `NUM_FEWSHOT`. Before anything runs, the clean documents (those of CLEAN whose content
hash falls under CLEAN_FRACTION) are written to ROOT/data/clean.jsonl.zst and removed, by `id`,
from each arm's web shards, written to ROOT/data/ARM.jsonl.zst, which the arm's runs train on
(ROOT = WORKDIR_ROOT/ABLATION). Each run then trains, is scored with phi3_jax.eval (bits per byte
of the clean set: ROOT/RUN/eval_clean.json; the benchmarks: eval_tasks.json), and the command
ends with `launch.report ROOT`. With tpu_vm or slurm the runs' checkpoints are remote: the
evaluation and report commands are printed, to run where the checkpoints are once they finish.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shlex
import subprocess
import sys

import zstandard

from launch import report, sweep
from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.data.sources import eval_fraction_of
from phi3_jax.eval import data as eval_data

CLEAN_FILE = "clean.jsonl.zst"
EVAL_CLEAN = "eval_clean.json"
EVAL_TASKS = "eval_tasks.json"


def read_records(pattern: str) -> list[dict]:
    """The records of every jsonl(.zst) shard a glob (relative to the repository) matches."""
    files = sorted(glob.glob(os.path.join(sweep.ROOT, pattern)))
    if not files:
        raise config_lib.ConfigError(f"{pattern}: no shards match")
    return [record for path in files for record in eval_data.read_jsonl(path)]


def write_records(path: str, records: list[dict]) -> None:
    paths.makedirs(paths.path(path).parent)
    with paths.path(path).open("wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        for record in records:
            text.write(json.dumps(record, ensure_ascii=False) + "\n")
        text.flush()


def clean_records(ablation) -> list[dict]:
    """The documents of CLEAN whose content hash falls under CLEAN_FRACTION."""
    records = read_records(ablation.CLEAN)
    return [r for r in records if eval_fraction_of(r["text"]) < ablation.CLEAN_FRACTION]


def prepare_data(ablation, data_dir: str) -> dict[str, dict]:
    """Writes the clean set and each arm's web shards without it; per arm, what was kept."""
    clean = clean_records(ablation)
    if not clean:
        raise config_lib.ConfigError(
            f"CLEAN_FRACTION={ablation.CLEAN_FRACTION}: no document of {ablation.CLEAN} is clean"
        )
    held_out = {r["id"] for r in clean}
    write_records(paths.join(data_dir, CLEAN_FILE), clean)
    out = {}
    for arm, spec in ablation.ARMS.items():
        records = read_records(spec["web"])
        kept = [r for r in records if r["id"] not in held_out]
        write_records(paths.join(data_dir, f"{arm}.jsonl.zst"), kept)
        out[arm] = {"documents": len(kept), "removed": len(records) - len(kept)}
    return out


def arm_of(run: dict) -> str:
    """The arm of a run: its config's `:arg`."""
    return run["config"].partition(":")[2]


def ablation_runs(ablation, data_dir: str) -> list[dict]:
    """The ablation's runs, each named as the sweep names it and reading its arm's shards."""
    out = []
    for run in ablation.runs():
        arm = arm_of(run)
        if arm not in ablation.ARMS:
            raise config_lib.ConfigError(f"{run['config']}: arm {arm!r} is not in ARMS")
        web = {"data.sources.web.globs": paths.join(data_dir, f"{arm}.jsonl.zst")}
        out.append(
            dict(
                run,
                name=sweep.run_name(run),
                overrides=run["overrides"] | web,
                record={"arm": arm, "evaluations": [EVAL_CLEAN, EVAL_TASKS]},
            )
        )
    return out


def eval_commands(ablation, workdir: str, data_dir: str) -> list[list[str]]:
    """phi3_jax.eval on a finished run: the clean set's bits per byte, then the benchmarks."""
    base = [sys.executable, "-m", "phi3_jax.eval", f"--workdir={workdir}"]
    clean = paths.join(data_dir, CLEAN_FILE)
    return [
        base + [f"--tasks=ppl:{clean}", f"--output={paths.join(workdir, EVAL_CLEAN)}"],
        base
        + [
            f"--tasks={','.join(ablation.TASKS)}",
            f"--limit={ablation.TASK_LIMIT}",
            f"--num_fewshot={ablation.NUM_FEWSHOT}",
            f"--output={paths.join(workdir, EVAL_TASKS)}",
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    args, extra = sweep.parse_args(
        __doc__, "a configs/ablations/*.py file", "workdir/ablations", argv
    )
    root = sweep.sweep_root(args.file, paths.resolve(args.workdir_root))
    data_dir = paths.join(root, "data")
    try:
        ablation = sweep.load_module(args.file)
        runs = ablation_runs(ablation, data_dir)
        launches = sweep.plan(runs, root, args.launcher, extra)
        if not args.dry_run:
            sweep.write_records(launches)
            for arm, counts in prepare_data(ablation, data_dir).items():
                print(
                    f"arm {arm}: {counts['documents']} documents ({counts['removed']} clean ones removed)"
                )
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    remote = args.launcher != "local"
    env = os.environ | {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    for i, planned in enumerate(launches):
        status = sweep.launch(planned, args.dry_run)
        for command in eval_commands(ablation, planned["workdir"], data_dir) if not status else []:
            print(shlex.join(command), flush=True)
            if not (args.dry_run or remote or status):
                status = subprocess.run(command, cwd=sweep.ROOT, env=env).returncode
        if status:
            print(f"error: run {i + 1}/{len(launches)} exited with {status}", file=sys.stderr)
            return status
    print(shlex.join([sys.executable, "-m", "launch.report", root]), flush=True)
    if args.dry_run or remote:
        return 0
    return report.main([root])


if __name__ == "__main__":
    sys.exit(main())
