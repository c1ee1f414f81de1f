"""`python -m launch.sweep configs/sweeps/scale.py --launcher=local|tpu_vm|slurm [--dry_run]`

Expands a sweep file (whose `runs()` returns dicts of `config`, a configs/*.py file with an
optional `:arg`, and `overrides`, dotted config keys -> values) into one launch per run. Each run
trains in its own workdir, WORKDIR_ROOT/SWEEP/NAME, NAME spelled from the config and overrides.
`--dry_run` prints the commands; otherwise they run one after another (slurm's only queue jobs).
Options after `--` go to the launcher script (e.g. `-- --name=my-tpu --zone=us-east5-b`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

import ml_collections

from phi3_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_module(path: str):
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
    return _load_module(sweep_path).runs()


def load_config(spec: str, overrides: dict) -> ml_collections.ConfigDict:
    """The run's config as training will see it: `path[:arg]`, the overrides applied, validated.

    An override of a key the schema does not have is a ConfigError naming it.
    """
    path, _, arg = spec.partition(":")
    config = _load_module(path).get_config(arg or None)
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
    return config_lib.validate(config)


def run_name(run: dict) -> str:
    """A folder name from the config file, its arg and the overrides (by their last key), e.g.
    `phi3_mini-tpu=v5p-128-lr=0.00016-steps=72882`."""
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


LAUNCHERS: dict[str, Callable[[list[str], list[str]], list[str]]] = {
    # One process on this machine (launch/local.sh takes more with its N).
    "local": lambda args, extra: ["bash", "launch/local.sh", "1", *extra, "--", *args],
    "tpu_vm": lambda args, extra: ["bash", "launch/tpu_vm.sh", *extra, "--", *args],
    # sbatch options (nodes, account, partition) come before the script, its arguments after.
    "slurm": lambda args, extra: ["sbatch", *extra, "launch/slurm.sbatch", *args],
}


def commands(
    sweep_path: str, launcher: str, workdir_root: str, extra: list[str]
) -> list[list[str]]:
    """One launch command per run of the sweep, each config checked first."""
    sweep = os.path.splitext(os.path.basename(sweep_path))[0]
    out = []
    for run in load_runs(sweep_path):
        load_config(run["config"], run["overrides"])
        workdir = f"{workdir_root.rstrip('/')}/{sweep}/{run_name(run)}"
        out.append(LAUNCHERS[launcher](train_args(run, workdir), extra))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a configs/sweeps/*.py file")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), required=True)
    parser.add_argument("--workdir_root", default="workdir/sweeps", help="local path or gs://")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after `--` belongs to the launcher script.
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1 :]
    try:
        launches = commands(args.sweep, args.launcher, args.workdir_root, extra)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, command in enumerate(launches):
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        status = subprocess.run(command, cwd=ROOT).returncode
        if status:
            print(f"error: run {i + 1}/{len(launches)} exited with {status}", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
