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
from phi3_jax.checkpoint import CHECKPOINTS_DIR, open_run

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"


def save_params(path: str, config: ml_collections.ConfigDict, params) -> None:
    """Write params and config; the directory appears only once complete."""
    with paths.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config_lib.to_json(config))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
            checkpointer.wait_until_finished()


def load_config(path: str) -> ml_collections.ConfigDict:
    """The configuration stored beside a params checkpoint."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: not found (not a phi3_jax params checkpoint?)")
    with open(file) as f:
        return config_lib.from_json(f.read())


def restore_params(path: str, abstract_params=None):
    """Params from a checkpoint; `abstract_params` (ShapeDtypeStructs, shardings) place them."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(
            os.path.join(os.path.abspath(path), PARAMS_DIR), abstract_params
        )


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
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(
        os.path.join(path, PARAMS_DIR)
    ):
        if step is not None:
            raise ValueError(f"step {step}: {path} is a params checkpoint, which has no steps")
        return "params", path, None
    if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        return "run", path, step
    name, parent = os.path.basename(path), os.path.dirname(path)
    if name == CHECKPOINTS_DIR and os.path.isdir(path):
        return "run", parent, step
    if name.isdigit() and os.path.basename(parent) == CHECKPOINTS_DIR and os.path.isdir(path):
        if step is not None and step != int(name):
            raise ValueError(f"step {step}: {path} is the checkpoint of step {name}")
        return "run", os.path.dirname(parent), int(name)
    raise FileNotFoundError(
        f"{path}: not a phi3_jax checkpoint (a params checkpoint holds {CONFIG_FILE} and "
        f"{PARAMS_DIR}/; a run is WORKDIR, WORKDIR/{CHECKPOINTS_DIR} or "
        f"WORKDIR/{CHECKPOINTS_DIR}/STEP)"
    )
