"""A run's checkpoints on an emulated gs:// bucket: the emulator stopped in the middle of a save is
a one-line SaveError, and the checkpoint before it restores once the bucket is back; on s3://
(orbax's arrays through `checkpoint.s3`) a checkpoint restores and a step without its commit file
is ignored. A params
checkpoint, written by orbax on local disk and uploaded, restores from either bucket."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

from phi3_jax import checkpoint, paths, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.train import loop
from phi3_jax.train import state as state_lib
from tests.train.train_fixtures import small_config


def _host(x: jax.Array) -> np.ndarray:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


@pytest.fixture
def short_retries(monkeypatch):
    """tensorstore's GCS retries cut to a few tenths of a second: by default a dead store is
    retried 32 times with delays growing to 32 s (15 minutes) before a save fails. orbax builds
    its tensorstore context from these module dicts and offers no setting of its own."""
    retries = {"max_retries": 2, "initial_delay": "0.1s", "max_delay": "0.2s"}
    for context in (ts_utils._BASE_TS_CONTEXT, ts_utils._DEFAULT_OCDBT_TS_CONTEXT):
        monkeypatch.setitem(context, "gcs_request_retries", retries)


@pytest.mark.slow  # gcsfs retries the dead store for ~30 s before the save fails
def test_emulator_stopped_mid_save_is_one_line_and_keeps_the_previous(gcs, short_retries):
    config = small_config()
    config.checkpoint.async_save = True
    workdir = paths.join(gcs.create_bucket(), "run")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = state_lib.init_state(config, mesh)
    manager = checkpoint.make_manager(workdir, config)
    assert checkpoint.save(manager, 1, state, _iterator(), config, "tok")
    assert checkpoint.finished_save_failed(manager, wait=True) is None

    assert checkpoint.save(manager, 2, state, _iterator(), config, "tok")
    gcs.stop()  # the background part of the save (tensorstore's writes, the commit) is under way
    error = checkpoint.finished_save_failed(manager, wait=True)
    assert error is not None
    message = str(checkpoint.save_error(manager, 2, error))
    assert "\n" not in message
    assert message.startswith(f"checkpoint: saving step 2 in {workdir}/checkpoints failed (")
    assert message.endswith("the last checkpoint, step 1, is kept")

    gcs.start()  # same port, same stored objects
    manager = checkpoint.make_manager(workdir, config)
    lines = []
    restored = checkpoint.restore_latest(
        manager, state_lib.abstract_state(config, mesh), _iterator(), config, "tok", lines.append
    )
    manager.close()
    assert restored is not None and restored[1] == 1, lines
    for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(_host(a), _host(b))


def test_s3_run_checkpoints_restore_and_an_uncommitted_step_is_ignored(s3):
    """A run's checkpoints on s3:// (orbax's arrays through tensorstore's s3 driver): the state
    restores bitwise; a step whose commit file is missing (a kill before orbax wrote it last) is
    not a step, and the one before restores."""
    config = small_config()
    workdir = paths.join(s3.create_bucket(), "run")
    # A small state of a train state's kinds (a float tree, a bf16 array, a PRNG key, an int
    # step): a model's init would cost seconds of compilation and checks nothing more here.
    state = {
        "params": {"w": jnp.linspace(-1.0, 1.0, 96).reshape(8, 12), "b": jnp.ones(5, jnp.bfloat16)},
        "rng": jax.random.key(7),
        "step": jnp.asarray(2, jnp.int32),
    }
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    manager = checkpoint.make_manager(workdir, config)
    for step in (1, 2):
        assert checkpoint.save(manager, step, state, _iterator(), config, "tok")
        assert checkpoint.finished_save_failed(manager, wait=True) is None
    manager.close()
    step_2 = paths.join(workdir, checkpoint.CHECKPOINTS_DIR, "2")
    # The arrays are tensorstore's objects in the bucket, not files under some local s3:/ path.
    assert paths.glob(paths.join(step_2, "state", "ocdbt.process_0", "d", "*"))
    paths.path(paths.join(step_2, "commit_success.txt")).unlink()

    manager = checkpoint.make_manager(workdir, config)
    assert manager.all_steps() == [1]
    lines = []
    restored = checkpoint.restore_latest(
        manager, abstract, _iterator(), config, "tok", lines.append
    )
    manager.close()
    assert lines == ["checkpoint: ignoring 2, a save that never completed"]
    assert restored is not None and restored[1] == 1
    for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(_host(a), _host(b))


def test_s3_adapter_refuses_another_orbax_version_in_one_line(s3, monkeypatch):
    monkeypatch.setattr(checkpoint.ocp, "__version__", "0.99.0")
    workdir = paths.join(s3.create_bucket(), "run")
    with pytest.raises(
        loop.WorkdirError,
        match=r"^--workdir=s3://\S+: phi3_jax.checkpoint.s3 adapts orbax-checkpoint 0.12.8, "
        r"this is 0.99.0; ",
    ):
        loop.prepare_workdir(workdir)


def test_a_new_bucket_workdir_has_nothing_to_restore(gcs):
    """A bucket has no empty directories: a new run's checkpoints/ does not exist yet."""
    config = small_config()
    manager = checkpoint.make_manager(paths.join(gcs.create_bucket(), "run"), config)
    lines = []
    assert checkpoint.restore_latest(manager, None, None, config, "tok", lines.append) is None
    assert lines == []
    manager.close()


def test_a_params_checkpoint_on_a_bucket_restores_equal(bucket):
    config = small_config()
    params = {
        "embed": jnp.arange(12.0).reshape(3, 4),
        "layers": {"w": jnp.ones((2, 3), jnp.bfloat16)},
    }
    where = paths.join(bucket, "params")
    params_checkpoint.save_params(where, config, params)
    assert params_checkpoint.locate(where) == ("params", where, None)
    saved_config, restored = params_checkpoint.load_params_checkpoint(where)
    assert saved_config.model.to_dict() == config.model.to_dict()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, _host(b))
