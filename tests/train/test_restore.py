"""`train.restore`: a run's params land on this process's own first device by default (never the
first global device, which is process 0's alone), or in their shards on a given mesh, with the
values that were saved. (Two processes evaluating a run: tests/eval/test_multiprocess.py.)"""

from __future__ import annotations

import grain
import jax
import ml_collections
import numpy as np
from train_fixtures import small_config

from phi3_jax import checkpoint, model, sharding
from phi3_jax.train import restore
from phi3_jax.train import state as state_lib


def _save_run(workdir: str):
    """A run's checkpoint of step 1 (a two-layer model of width 64, random normal params, saved
    from one device); its params."""
    config = small_config()
    config.model.update(hidden_size=64, intermediate_size=128, num_layers=2)
    config.checkpoint.async_save = False
    config = ml_collections.FrozenConfigDict(config)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: rng.standard_normal(a.shape).astype(a.dtype), model.abstract_params(config)
    )
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = state_lib.state_from_params(config, mesh, params)
    manager = checkpoint.make_manager(workdir, config)
    iterator = iter(grain.MapDataset.range(3).to_iter_dataset())
    checkpoint.save(manager, 1, state, iterator, config, "fingerprint")
    manager.wait_until_finished()
    manager.close()
    return params


def _assert_equal(got, want) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_params_restore_on_this_process_device_or_on_a_given_mesh(tmp_path, monkeypatch):
    saved = _save_run(str(tmp_path))
    # As on process 1 of 2: the first of the global devices is not this process's first.
    devices = jax.devices()
    with monkeypatch.context() as patched:
        patched.setattr(jax, "devices", lambda *_: devices[::-1])
        config, params, step = restore.restore_params_of_run(str(tmp_path))
    assert step == 1 and config.mesh.to_dict() == restore.ONE_DEVICE_MESH
    own = jax.local_devices()[0]
    assert {leaf.sharding.device_set == {own} for leaf in jax.tree.leaves(params)} == {True}
    _assert_equal(params, saved)

    mesh = jax.make_mesh((8, 1, 1, 1), sharding.MESH_AXES)
    config, params, _ = restore.restore_params_of_run(str(tmp_path), mesh=mesh)
    assert (config.mesh.data, config.mesh.fsdp) == (8, 1)
    want = jax.tree.leaves(state_lib.param_shardings(config, mesh))
    assert [leaf.sharding for leaf in jax.tree.leaves(params)] == want
    _assert_equal(params, saved)
