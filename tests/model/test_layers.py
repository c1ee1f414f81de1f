"""The decoder's pieces against their formulas in NumPy: RMSNorm (float32 inside, scaled), the
SwiGLU MLP, the KV cache written per row at its own slot, and remat leaving values unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.model import layers


@pytest.fixture(scope="module")
def model():
    config = phi3_tiny.get_config()
    config.model.update(hidden_size=16, intermediate_size=24, dtype="float32")
    return config_lib.freeze(config).model


def test_rms_norm_is_the_formula(model):
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    norm = layers.RMSNorm(model)
    params = norm.init(jax.random.key(0), x)
    scale = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    params = jax.tree.map(lambda _: scale, params)
    want = scale * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + model.rms_norm_eps)
    np.testing.assert_allclose(norm.apply(params, x), want, rtol=1e-5)


def test_mlp_is_swiglu(model):
    x = np.random.default_rng(1).normal(size=(2, 3, 16)).astype(np.float32)
    mlp = layers.MLP(model)
    params = nn.unbox(mlp.init(jax.random.key(1), x))["params"]
    kernel = {name: np.asarray(params[name]["kernel"]) for name in params}

    def silu(z):
        return z / (1 + np.exp(-z))

    hidden = silu(x @ kernel["gate_proj"]) * (x @ kernel["up_proj"])
    want = hidden @ kernel["down_proj"]
    np.testing.assert_allclose(mlp.apply({"params": params}, x), want, rtol=1e-4, atol=1e-5)


def test_cache_rows_are_written_at_their_own_slots():
    cache = jnp.zeros((2, 5, 1))
    new = jnp.asarray([[[1.0], [2.0]], [[3.0], [4.0]]])
    got = np.asarray(layers.write_cache(cache, new, jnp.asarray([0, 3])))[..., 0]
    assert got.tolist() == [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]]


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_values_and_gradients(model, policy):
    x = np.random.default_rng(2).normal(size=(1, 2, 16)).astype(np.float32)
    plain, remat = layers.MLP(model), layers.remat(layers.MLP, policy)(model)
    params = plain.init(jax.random.key(2), x)

    def loss(module, p):
        return jnp.sum(module.apply(p, x) ** 2)

    assert layers.remat(layers.MLP, "none") is layers.MLP
    np.testing.assert_allclose(loss(remat, params), loss(plain, params), rtol=1e-6)
    grads = [jax.grad(lambda p, m=m: loss(m, p))(params) for m in (remat, plain)]
    for a, b in zip(*map(jax.tree.leaves, grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
