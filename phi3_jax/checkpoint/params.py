"""A params-only checkpoint: what `convert hf-to-orbax` writes and training can start from.

`DIR/params` (an orbax PyTree checkpoint) and `DIR/config.json` (the resolved run
configuration), written atomically (`paths.atomic_directory`). `locate` tells such a directory
from a run's (WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP), as checkpoint.init_from
may name either.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.checkpoint import CHECKPOINTS_DIR, open_run, orbax_path

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"


def save_params(path: str, config: ml_collections.ConfigDict, params) -> None:
    """Write params and config; the directory appears only once complete. orbax writes them on
    local disk (`paths.atomic_directory`), so `path` may be on any bucket, s3:// included."""
    with paths.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config_lib.to_json(config))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
            checkpointer.wait_until_finished()


def load_config(path: str) -> ml_collections.ConfigDict:
    """The configuration stored beside a params checkpoint."""
    file = paths.path(paths.join(path, CONFIG_FILE))
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (not a phi3_jax params checkpoint?)")
    return config_lib.from_json(file.read_text())


def restore_params(path: str, abstract_params=None):
    """Params from a checkpoint; `abstract_params` (ShapeDtypeStructs, shardings) place them."""
    with ocp.StandardCheckpointer() as checkpointer:
        # orbax reads in place: local, gs://, and s3:// through `checkpoint.s3` (orbax_path).
        return checkpointer.restore(paths.join(orbax_path(path), PARAMS_DIR), abstract_params)


def load_params_checkpoint(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, params) of a params checkpoint, params as host numpy arrays."""
    config = load_config(path)
    return config, jax.tree.map(jax.device_get, restore_params(path))


def init_config(path: str) -> ml_collections.ConfigDict:
    """The config saved with what checkpoint.init_from names: a params checkpoint or a run
    (WORKDIR, .../checkpoints or .../checkpoints/STEP; `locate`)."""
    kind, where, step = locate(path)
    if kind == "params":
        return load_config(where)
    manager, _, saved = open_run(where, step)
    manager.close()
    return config_lib.from_json(json.dumps(saved["config"]))


def locate(path: str, step: int | None = None) -> tuple[str, str, int | None]:
    """What `path` names: ("params", path, None) for a params checkpoint, or ("run", WORKDIR,
    step) for a training run given as WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP
    (step None: the latest). Anything else is a FileNotFoundError naming the path."""
    here = paths.path(path)
    path = os.fspath(here)
    if (here / CONFIG_FILE).is_file() and (here / PARAMS_DIR).is_dir():
        if step is not None:
            raise ValueError(f"step {step}: {path} is a params checkpoint, which has no steps")
        return "params", path, None
    if (here / CHECKPOINTS_DIR).is_dir():
        return "run", path, step
    if here.name == CHECKPOINTS_DIR and here.is_dir():
        return "run", os.fspath(here.parent), step
    if here.name.isdigit() and here.parent.name == CHECKPOINTS_DIR and here.is_dir():
        if step is not None and step != int(here.name):
            raise ValueError(f"step {step}: {path} is the checkpoint of step {here.name}")
        return "run", os.fspath(here.parent.parent), int(here.name)
    raise FileNotFoundError(
        f"{path}: not a phi3_jax checkpoint (a params checkpoint holds {CONFIG_FILE} and "
        f"{PARAMS_DIR}/; a run is WORKDIR, WORKDIR/{CHECKPOINTS_DIR} or "
        f"WORKDIR/{CHECKPOINTS_DIR}/STEP)"
    )
