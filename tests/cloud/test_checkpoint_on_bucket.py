"""A run's checkpoints on an emulated gs:// bucket: the emulator stopped in the middle of a save is
a one-line SaveError, and the checkpoint before it restores once the bucket is back; an s3://
workdir is refused in one line (orbax-checkpoint writes gs:// and local paths only). A params
checkpoint, written by orbax on local disk and uploaded, restores from either bucket."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np
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


def test_s3_workdir_is_refused_in_one_line(s3):
    workdir = paths.join(s3.create_bucket(), "run")
    with pytest.raises(
        loop.WorkdirError, match=r"^--workdir=s3://.*: orbax-checkpoint .* not s3://"
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
