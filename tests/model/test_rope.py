"""`phi3_jax.model.rope`: the LongRoPE tables from factor arrays passed in (traced, batched under
one compile) equal those the model reads from its config, and the attention factor is HF's."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from configs import phi3_mini_128k
from phi3_jax import config as config_lib
from phi3_jax.model import rope


def test_traced_factor_candidates_equal_the_configured_tables():
    model = phi3_mini_128k.get_config().model
    head_dim = config_lib.head_dim(model)
    positions = jnp.arange(8)[None] + jnp.array([[0], [5000]])  # a short row and a long one
    candidates = jnp.stack(
        [jnp.asarray(model.rope_long_factor), jnp.asarray(model.rope_short_factor)]
    )

    @jax.jit
    def tables(long_factors):  # one compile for every candidate (traced, vmapped)
        def one(long_factor):
            return rope.longrope_cos_sin(
                positions,
                positions[:, -1] + 1 > model.original_max_position_embeddings,
                jnp.asarray(model.rope_short_factor),
                long_factor,
                head_dim,
                model.rope_theta,
                rope.model_attention_factor(model),
            )

        return jax.vmap(one)(long_factors)

    cos, sin = tables(candidates)
    want_cos, want_sin = rope.rotary_cos_sin(model, positions, jnp.array([False, True]))
    np.testing.assert_array_equal(cos[0], want_cos)
    np.testing.assert_array_equal(sin[0], want_sin)
    # The second candidate puts the short factors on the long row: its short row is unchanged,
    # its long row differs.
    np.testing.assert_array_equal(cos[1, 0], want_cos[0])
    assert not np.allclose(cos[1, 1], want_cos[1])


def test_attention_factor_is_hf_formula():
    model = phi3_mini_128k.get_config().model
    extension = model.max_position_embeddings / model.original_max_position_embeddings
    expected = math.sqrt(1 + math.log(extension) / math.log(model.original_max_position_embeddings))
    assert rope.model_attention_factor(model) == expected
    assert rope.attention_factor(1.0, 4096) == 1.0
