"""Checkpoints on disk (orbax).

A params-only checkpoint (`save_params` / `restore_params`) is what `convert hf-to-orbax` writes
and what training can start from: `DIR/params` (an orbax PyTree checkpoint) and `DIR/config.json`
(the resolved run configuration).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import ml_collections
import orbax.checkpoint as ocp

from phi3_jax import config as config_lib

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"


def save_params(path: str, config: ml_collections.ConfigDict, params) -> None:
    """Write params and config; the directory appears only once complete."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists; refusing to overwrite")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            f.write(config_lib.to_json(config))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS_DIR), params)
            checkpointer.wait_until_finished()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
