"""`python -m launch.sweep configs/sweeps/scale.py --launcher=local|tpu_vm|slurm [--dry_run]`

Expands a sweep file (whose `runs()` returns dicts of `config`, a configs/*.py file with an
optional `:arg`, and `overrides`, dotted config keys -> values) into one launch per run. Each run
trains in its own workdir, WORKDIR_ROOT/SWEEP/NAME, NAME spelled from the config and overrides.
`--dry_run` prints the commands; otherwise they run one after another (slurm's only queue jobs).
Before the first run launches, each run's WORKDIR/run.json records what it is (config, overrides, steps, tokens,
parameters), which `python -m launch.report` reads.
Options after `--` go to the launcher script (e.g. `-- --name=my-tpu --zone=us-east5-b`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

import ml_collections

from phi3_jax import config as config_lib
from phi3_jax import metrics, model, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(path: str):
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], os.path.join(ROOT, path)
    )
    if spec is None or not os.path.exists(os.path.join(ROOT, path)):
        raise config_lib.ConfigError(f"{path}: no such file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_runs(sweep_path: str) -> list[dict]:
    """The runs a sweep file lists."""
    return load_module(sweep_path).runs()


def load_config(spec: str, overrides: dict) -> ml_collections.FrozenConfigDict:
    """The run's config as training will see it: `path[:arg]`, the overrides applied, validated
    and frozen.

    An override of a key the schema does not have is a ConfigError naming it.
    """
    path, _, arg = spec.partition(":")
    config = load_module(path).get_config(arg or None)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = config
        for section in sections:
            node = node[section] if section in node else None
            if not isinstance(node, ml_collections.ConfigDict):
                break
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise config_lib.ConfigError(f"{key}={value!r}: unknown key (in {spec})")
        node[leaf] = value
    return config_lib.freeze(config)


def run_name(run: dict) -> str:
    """A folder name from the config file, its arg and the overrides (by their last key), e.g.
    `phi3_mini-tpu=v5p-128-lr=0.00016-steps=72882`; a run's own `name` if it has one."""
    if "name" in run:
        return run["name"]
    path, _, arg = run["config"].partition(":")
    parts = [os.path.splitext(os.path.basename(path))[0]]
    if arg:
        parts.append(arg)
    parts += [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in run["overrides"].items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def train_args(run: dict, workdir: str) -> list[str]:
    """The phi3_jax.train arguments of a run."""
    overrides = [f"--config.{key}={value}" for key, value in run["overrides"].items()]
    return [f"--config={run['config']}", f"--workdir={workdir}", *overrides]


RUN_FILE = "run.json"


def run_record(run: dict, config: ml_collections.ConfigDict) -> dict:
    """What WORKDIR/run.json says of a run: its name, config and overrides, and the budget and
    model size the report needs (tokens trained; parameters in all and outside the embeddings)."""
    tokens = config.train.steps * config.train.global_batch_size * config.train.seq_len
    return {
        "name": run_name(run),
        "config": run["config"],
        "overrides": run["overrides"],
        "steps": config.train.steps,
        "tokens": tokens,
        "params": model.param_count(config),
        "non_embedding_params": metrics.block_params(config),
    } | run.get("record", {})


def write_run_record(workdir: str, record: dict) -> None:
    """WORKDIR/run.json (local or a bucket's: launch.report reads either)."""
    paths.makedirs(workdir)
    paths.path(paths.join(workdir, RUN_FILE)).write_text(json.dumps(record, indent=1))


LAUNCHERS: dict[str, Callable[[list[str], list[str]], list[str]]] = {
    # One process on this machine (launch/local.sh takes more with its N), in this interpreter.
    "local": lambda args, extra: [
        "bash",
        "launch/local.sh",
        "1",
        f"--python={sys.executable}",
        *extra,
        "--",
        *args,
    ],  # fmt: skip
    "tpu_vm": lambda args, extra: ["bash", "launch/tpu_vm.sh", *extra, "--", *args],
    # sbatch options (nodes, account, partition) come before the script, its arguments after.
    "slurm": lambda args, extra: ["sbatch", *extra, "launch/slurm.sbatch", *args],
}


def sweep_root(sweep_path: str, workdir_root: str) -> str:
    """WORKDIR_ROOT/SWEEP, where the sweep's runs have their workdirs."""
    return f"{workdir_root.rstrip('/')}/{os.path.splitext(os.path.basename(sweep_path))[0]}"


def plan(runs: list[dict], root: str, launcher: str, extra: list[str]) -> list[dict]:
    """Per run, its `workdir`, launch `command` and `record` (run.json), each config checked
    first: one bad run stops the sweep before anything starts."""
    out = []
    for run in runs:
        config = load_config(run["config"], run["overrides"])
        workdir = f"{root}/{run_name(run)}"
        command = LAUNCHERS[launcher](train_args(run, workdir), extra)
        out.append(dict(workdir=workdir, command=command, record=run_record(run, config)))
    return out


def commands(
    sweep_path: str, launcher: str, workdir_root: str, extra: list[str]
) -> list[list[str]]:
    """One launch command per run of the sweep, each config checked first."""
    root = sweep_root(sweep_path, workdir_root)
    return [p["command"] for p in plan(load_runs(sweep_path), root, launcher, extra)]


def launch(planned: dict, dry_run: bool) -> int:
    """Prints a planned run's command and, unless `dry_run`, runs it."""
    print(shlex.join(planned["command"]), flush=True)
    if dry_run:
        return 0
    return subprocess.run(planned["command"], cwd=ROOT).returncode


def write_records(launches: list[dict]) -> None:
    """Every planned run's run.json, before any starts: the report lists those not yet run."""
    for planned in launches:
        write_run_record(planned["workdir"], planned["record"])


def parse_args(
    doc: str, what: str, root: str, argv: list[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """The options of a launch command (the file `what` names, --launcher, --workdir_root
    defaulting to `root`, --dry_run) and the launcher script's own, those after `--`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("file", help=what)
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), required=True)
    parser.add_argument("--workdir_root", default=root, help="local path or gs://")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(__doc__, "a configs/sweeps/*.py file", "workdir/sweeps", argv)
    try:
        root = sweep_root(args.file, args.workdir_root)
        launches = plan(load_runs(args.file), root, args.launcher, extra)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.dry_run:
        write_records(launches)
    for i, planned in enumerate(launches):
        status = launch(planned, args.dry_run)
        if status:
            print(f"error: run {i + 1}/{len(launches)} exited with {status}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
