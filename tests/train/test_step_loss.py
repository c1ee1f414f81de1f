"""The loss against numpy: masked next-token cross-entropy over the global batch's real tokens,
the z-loss, the step's metrics, and indifference to whatever fills the padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_fixtures import packed_batch, small_config

from phi3_jax import model, sharding, train


def numpy_losses(config, params, batch) -> tuple[float, float]:
    """(mean cross-entropy, mean logsumexp^2) over loss-masked tokens, in float64."""
    logits = np.asarray(
        model.logits(
            config,
            params,
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
        ),
        np.float64,
    )
    top = logits.max(-1, keepdims=True)
    lse = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    target = np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"].astype(np.float64)
    return float(((lse - target) * mask).sum() / mask.sum()), float(
        (lse**2 * mask).sum() / mask.sum()
    )


@pytest.fixture(scope="module")
def setup():
    config = small_config(z_loss=1e-4)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    return config, mesh, train.init_state(config, mesh), packed_batch(config)


def test_eval_step_matches_numpy(setup):
    config, mesh, state, batch = setup
    metrics = train.make_eval_step(config, mesh)(state.params, batch)
    ce, _ = numpy_losses(config, state.params, batch)
    assert float(metrics["loss"]) == pytest.approx(ce, rel=1e-6)
    assert float(metrics["tokens"]) == batch["loss_mask"].sum()


def test_train_step_metrics_match_numpy_and_optax(setup):
    config, mesh, state, batch = setup
    ce, lse_squared = numpy_losses(config, state.params, batch)

    def objective(params):
        # The same objective written independently: optax's cross-entropy, masked mean.
        logits = model.logits(
            config,
            params,
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
        )
        mask = batch["loss_mask"]
        token_ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        z = jnp.square(jax.nn.logsumexp(logits, axis=-1))
        return jnp.sum((token_ce + 1e-4 * z) * mask) / jnp.sum(mask)

    grad_norm = optax.global_norm(jax.jit(jax.grad(objective))(state.params))
    state = jax.tree.map(jnp.copy, state)  # the step donates its input
    new_state, metrics = train.make_train_step(config, mesh)(state, batch)
    assert float(metrics["loss"]) == pytest.approx(ce, rel=1e-6)
    assert float(metrics["z_loss"]) == pytest.approx(1e-4 * lse_squared, rel=1e-6)
    assert float(metrics["grad_norm"]) == pytest.approx(float(grad_norm), rel=1e-6)
    assert float(metrics["param_norm"]) == pytest.approx(
        float(optax.global_norm(new_state.params)), rel=1e-6
    )
    assert float(metrics["learning_rate"]) == pytest.approx(1e-3)
    assert float(metrics["tokens"]) == batch["loss_mask"].sum()
    assert int(new_state.step) == 1


def test_padding_content_changes_nothing(setup):
    config, mesh, state, batch = setup
    scrambled = dict(batch)
    padding = batch["segment_ids"] == 0
    assert padding.any()
    rng = np.random.default_rng(1)
    for key in ("tokens", "targets"):
        noise = rng.integers(0, config.model.vocab_size, batch[key].shape, dtype=np.int32)
        scrambled[key] = np.where(padding, noise, batch[key])

    @jax.jit
    def grads(batch):
        with sharding.activate(mesh, sharding.logical_rules(config)):
            return train.loss_and_grads(config, state.params, batch)

    (g1, m1), (g2, m2) = grads(batch), grads(scrambled)
    assert float(m1["loss"]) == float(m2["loss"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)
