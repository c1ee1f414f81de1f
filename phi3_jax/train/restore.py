"""The params of a run, or of what checkpoint.init_from names, restored for use: by generate,
eval, convert, and a run starting from another's params."""

from __future__ import annotations

import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from phi3_jax import config as config_lib
from phi3_jax import model, paths, sharding
from phi3_jax.checkpoint import open_run
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.checkpoint.checksums import verify_checksums
from phi3_jax.train import state as state_lib

# What a run's params are restored onto by default: one device of this process, no axis split.
ONE_DEVICE_MESH = dict(data=1, fsdp=1, sequence=1, tensor=1, dcn_data=1, dcn_fsdp=1)


def restore_params_of_run(workdir: str, step: int | None = None, mesh: Mesh | None = None):
    """(config, params, step) of a run's checkpoint (default: the latest).

    The params are read into their shards of the run's sharding rules on `mesh`, every process
    reading its own; by default onto this process's first device (one-device mesh), each of
    several processes reading the whole checkpoint (the first global device is process 0's
    alone). The config is the one the run saved with that mesh's axes as its mesh. Only the
    params are returned. A missing run or step is a FileNotFoundError naming it.
    """
    manager, step, saved = open_run(workdir, step)
    axes = ONE_DEVICE_MESH if mesh is None else ONE_DEVICE_MESH | dict(mesh.shape)
    # The mesh goes in before the config is validated, not into a validated one.
    config = config_lib.from_json(json.dumps(saved["config"] | {"mesh": axes}))
    mesh = mesh or sharding.make_mesh(config.mesh, jax.local_devices()[:1])
    abstract = state_lib.abstract_state(config, mesh)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    manager.close()
    verify_checksums(
        restored["state"], saved["checksums"], paths.join(manager.directory, str(step))
    )
    return config, restored["state"].params, step


def restore_sharded_params(path: str, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """The params of what checkpoint.init_from names, each in its shards of the config's param
    sharding on `mesh`: a params checkpoint's read in place; a run's (its latest step, or the
    STEP of .../checkpoints/STEP) read on `mesh` in the run's own sharding, then laid out in
    the config's."""
    kind, where, step = params_checkpoint.locate(path)
    if kind == "run":
        params = restore_params_of_run(where, step, mesh)[1]
        return jax.device_put(params, state_lib.param_shardings(config, mesh))
    targets = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        model.abstract_params(config),
        state_lib.param_shardings(config, mesh),
    )
    return params_checkpoint.restore_params(where, targets)
