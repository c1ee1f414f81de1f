"""Checkpoints on disk (orbax).

A params-only checkpoint (`save_params` / `restore_params`) is what `convert hf-to-orbax` writes
and what training can start from: `DIR/params` (an orbax PyTree checkpoint) and `DIR/config.json`
(the resolved run configuration).

A run's checkpoints (`make_manager`, `save`, `restore_latest`) are an orbax CheckpointManager in
WORKDIR/checkpoints: per step the train state, the grain iterator's state and the config. Restore
goes through abstract targets, so a state saved on one mesh loads onto any other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from phi3_jax import config as config_lib
from phi3_jax import model, sharding
from phi3_jax.train import state as state_lib

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


def restore_sharded_params(path: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """A params checkpoint's params, each in its shards of the config's param sharding on `mesh`."""
    targets = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        model.abstract_params(config),
        state_lib.param_shardings(config, mesh),
    )
    return restore_params(path, targets)


def load_params_checkpoint(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, params) of a params checkpoint, params as host numpy arrays."""
    config = load_config(path)
    return config, jax.tree.map(jax.device_get, restore_params(path))


# Train checkpoints: an orbax CheckpointManager in WORKDIR/checkpoints, one directory per step
# holding the train state, the data iterator's state (grain) and the resolved config (JSON).
CHECKPOINTS_DIR = "checkpoints"
ITEMS = ("state", "data", "config")
# Model keys that decide parameter shapes: a checkpoint restores only where they agree.
SHAPE_KEYS = (
    "architecture",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "param_dtype",
)
# orbax writes a step into STEP<suffix>... and renames it once complete.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The run's checkpoint manager: async saves (checkpoint.async_save), max_to_keep kept."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.max_to_keep,
        enable_async_checkpointing=config.checkpoint.async_save,
        create=True,
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR), item_names=ITEMS, options=options
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    iterator,
    config: ml_collections.ConfigDict,
) -> bool:
    """Start saving `step` (in the background when async); False if it is already saved."""
    if step in manager.all_steps():
        return False
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            config=ocp.args.JsonSave(json.loads(config_lib.to_json(config))),
        ),
        force=True,
    )


def incomplete_steps(manager: ocp.CheckpointManager) -> list[str]:
    """Directories of saves that never completed (the process died while writing them)."""
    return sorted(p.name for p in manager.directory.iterdir() if _TMP_SUFFIX in p.name)


def check_model(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
    """Raise ConfigError if a checkpoint's model (its saved config) has other shapes."""
    diffs = [
        f"model.{key}={saved['model'][key]!r} (config: {config.model[key]!r})"
        for key in SHAPE_KEYS
        if saved["model"][key] != config.model[key]
    ]
    if diffs:
        raise config_lib.ConfigError(
            f"{where}: the checkpoint's model has other shapes than the config: {', '.join(diffs)};"
            " train with the checkpoint's model settings or use a new --workdir"
        )


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract_state, iterator, config):
    where = os.path.join(str(manager.directory), str(step))
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    check_model(saved["config"], config, where)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    return restored["state"]


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_state,
    iterator,
    config: ml_collections.ConfigDict,
    log: Callable[[str], None] = print,
):
    """(state, step) of the newest checkpoint that restores, or None without checkpoints.

    The state lands in `abstract_state`'s shardings (any mesh); `iterator` is set to the saved
    data position. A checkpoint that fails to read falls back to the one before, saying so; one
    whose model shapes disagree with the config is an error.
    """
    for name in incomplete_steps(manager):
        log(f"checkpoint: ignoring {name}, a save that never completed")
    steps = sorted(manager.all_steps(), reverse=True)
    corrupted = []
    for i, step in enumerate(steps):
        try:
            state = _restore_step(manager, step, abstract_state, iterator, config)
        except config_lib.ConfigError:
            raise
        except Exception as error:  # Whatever failed to read, this checkpoint is unusable.
            then = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
            log(
                f"checkpoint: step {step} in {manager.directory} is corrupted "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); {then}"
            )
            corrupted.append(step)
            continue
        _set_aside(manager, corrupted, log)
        return state, step
    if steps:
        raise RuntimeError(f"{manager.directory}: no checkpoint could be restored (see above)")
    return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], log: Callable[[str], None]):
    """Renames corrupted steps to corrupted-STEP (kept for inspection), so they can be re-saved."""
    for step in steps:
        target = manager.directory / f"corrupted-{step}"
        if jax.process_index() == 0:
            os.rename(manager.directory / str(step), target)
        log(f"checkpoint: moved the corrupted step {step} to {target}")
    if steps:
        manager.reload()


def restore_params_of_run(workdir: str, step: int | None = None):
    """(config, params, step) of a run's checkpoint (default: the latest), params on one device.

    The config is the one the run saved, with a one-device mesh (no data, fsdp, sequence or
    tensor split); only the params are read. A missing run or step is a FileNotFoundError
    naming it.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not found (not a training run's workdir?)")
    manager = ocp.CheckpointManager(
        directory, item_names=ITEMS, options=ocp.CheckpointManagerOptions(read_only=True)
    )
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"{directory}: no checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (steps: {steps})")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = config_lib.from_json(json.dumps(saved["config"]))
    config.mesh.update(data=1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    abstract = state_lib.abstract_state(config, mesh)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    manager.close()
    return config, restored["state"].params, step


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
