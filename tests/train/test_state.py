"""The train state: its abstract form (shapes and shardings, nothing allocated) is what
`init_state` makes, Adam's moments are sharded like their params and the scalars replicated,
and a state around given params starts at step 0 with those params."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from train_fixtures import small_config

from phi3_jax import config as config_lib
from phi3_jax import sharding
from phi3_jax.train import state as state_lib


@pytest.fixture(scope="module")
def initial():
    """(config, mesh over 4 devices of fsdp, the initial state) of a 2-layer model of width 64."""
    config = small_config((1, 4, 1))
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128)
    config = config_lib.freeze(config)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
    return config, mesh, state_lib.init_state(config, mesh)


def test_init_state_is_its_abstract_state_in_its_shards(initial):
    config, mesh, state = initial
    abstract = state_lib.abstract_state(config, mesh)
    described = jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), abstract)
    assert jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), state) == described
    assert int(state.step) == 0
    # The embedding's rows over fsdp; Adam's moments of it the same; the step replicated.
    embed = state.params["embed_tokens"]["embedding"].sharding.spec
    assert "fsdp" in jax.tree.leaves(tuple(embed))
    mu = state.opt_state[1][0].mu["embed_tokens"]["embedding"].sharding.spec
    assert mu == embed
    assert state.step.sharding.spec == jax.sharding.PartitionSpec()


def test_a_state_from_params_keeps_them_and_starts_at_step_0(initial):
    config, mesh, state = initial
    params = jax.tree.map(lambda a: a + 1, state.params)
    fresh = state_lib.state_from_params(config, mesh, params)
    assert int(fresh.step) == 0
    for a, b in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shardings = state_lib.state_shardings(config, mesh)
    assert jax.tree.map(lambda a: a.sharding, fresh) == shardings
