"""The model as pure functions of (config, params): shapes from nothing allocated, the logical
axes of every parameter, and hidden states whose lm_head gives the logits (refused where the
family has no such split). Cached decoding: test_transformer.py, test_decode_longrope.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import phi3_small, phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.model import functional


@pytest.fixture(scope="module")
def tiny():
    config = phi3_tiny.get_config()
    # Small enough that each function compiles in a moment.
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128, dtype="float32")
    config = config_lib.freeze(config)
    return config, jax.jit(lambda key: functional.init_params(config, key))(jax.random.key(0))


def test_abstract_params_axes_and_count_agree_with_the_params(tiny):
    config, params = tiny
    abstract = functional.abstract_params(config)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == shapes
    sizes = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    assert functional.param_count(config) == sizes
    axes = functional.logical_axes(config)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    for spec, array in zip(
        jax.tree.leaves(axes, is_leaf=is_spec), jax.tree.leaves(params), strict=True
    ):
        assert len(spec) == array.ndim


@pytest.mark.parametrize("flat_projections", [False, True])
def test_lm_head_of_the_hidden_states_is_the_logits(tiny, flat_projections):
    plain, params = tiny
    config = config_lib.replace(plain, model={"flat_projections": flat_projections})
    tokens = jnp.asarray([[1, 5, 9, 2], [7, 3, 3, 8]])
    hidden = jax.jit(functools.partial(functional.hidden_states, config))(params, tokens)
    assert hidden.shape == (2, 4, config.model.hidden_size)
    np.testing.assert_allclose(
        jax.jit(functools.partial(functional.lm_head_logits, config))(params, hidden),
        jax.jit(functools.partial(functional.logits, plain))(params, tokens),
        rtol=1e-6,
    )
    small = config_lib.freeze(phi3_small.get_config("tiny"))
    with pytest.raises(ValueError, match=r"^hidden_states: model.architecture='phi3small' has"):
        functional.hidden_states(small, None, tokens)
