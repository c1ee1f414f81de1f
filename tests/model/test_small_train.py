"""The tiny Phi-3-small trains with the sharded train step: a (2, 2, 2) mesh of emulated devices
gives the losses, gradient norms and params of one device (dropout on: its masks do not depend on
the mesh), and dropout acts in the train step only, keyed by the step."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import phi3_small
from phi3_jax import config as config_lib
from phi3_jax import sharding, train

SEQ_LEN = 48  # past 2 local blocks of 8 tokens: the vertical stripes are in play
BATCH = 8
STEPS = 3


def tiny_small_config(mesh, **model_overrides):
    config = phi3_small.get_config("tiny")
    config.model.update(model_overrides)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.train.update(seq_len=SEQ_LEN, global_batch_size=BATCH, steps=10)
    config.optim.update(lr=1e-3, warmup_steps=0, eps=1e-6)  # eps: see tests/train fixtures
    return config_lib.validate(config)


def packed_batch(config):
    """Two documents per row, then padding; targets avoid the dummy ids (their logit is -inf)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, min(config.model.dummy_token_ids), (BATCH, SEQ_LEN + 1))
    segment_ids = np.zeros((BATCH, SEQ_LEN), np.int32)
    positions = np.zeros((BATCH, SEQ_LEN), np.int32)
    for row in range(BATCH):
        first, real = 9 + 3 * row, SEQ_LEN - row % 3
        segment_ids[row, :first], segment_ids[row, first:real] = 1, 2
        positions[row, :first] = np.arange(first)
        positions[row, first:real] = np.arange(real - first)
    return {
        "tokens": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": positions,
        "segment_ids": segment_ids,
        "loss_mask": (segment_ids > 0).astype(np.int32),
    }


def run(mesh_shape, devices=None):
    config = tiny_small_config(mesh_shape)
    mesh = sharding.make_mesh(config.mesh, devices)
    batch_sharding = train.batch_shardings(config, mesh)["tokens"]
    batch = sharding.global_batch(packed_batch(config), batch_sharding, BATCH)
    step = train.make_train_step(config, mesh)
    state = train.init_state(config, mesh)
    history = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        history.append({key: float(value) for key, value in metrics.items()})
    return history, jax.device_get(state.params)


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_same_losses_on_2x2x2_mesh_as_one_device():
    one_history, one_params = run((1, 1, 1), jax.devices()[:1])
    mesh_history, mesh_params = run((2, 2, 2))
    losses = [h["loss"] for h in one_history]
    real = 512 - len(phi3_small.get_config("tiny").model.dummy_token_ids)
    assert abs(losses[0] - np.log(real)) < 0.2  # uniform over the 421 real (unmasked) ids
    assert losses[0] > losses[1] > losses[2]
    for got, want in zip(mesh_history, one_history, strict=True):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    for got, want in zip(jax.tree.leaves(mesh_params), jax.tree.leaves(one_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_dropout_acts_in_the_train_step_keyed_by_the_step():
    """The configured 0.1 dropout changes the train loss (against the deterministic loss of the
    same params, which eval computes), the same state and step draw the same masks, the next
    step other ones."""
    config = tiny_small_config((1, 1, 1))
    assert config.model.embedding_dropout == config.model.ffn_dropout == 0.1
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    batch_sharding = train.batch_shardings(config, mesh)["tokens"]
    batch = sharding.global_batch(packed_batch(config), batch_sharding, BATCH)
    step = train.make_train_step(config, mesh)
    state = train.init_state(config, mesh)
    # Sharper logits than at init (near uniform), so dropping units moves the loss visibly.
    state = state.replace(params=jax.tree.map(lambda x: 8 * x, state.params))
    eval_step = train.make_eval_step(config, mesh)
    deterministic = float(eval_step(state.params, batch)["loss"])
    assert deterministic == float(eval_step(state.params, batch)["loss"])

    def first_loss(step_index: int) -> float:
        # The step donates its state: each call gets a copy.
        fresh = jax.tree.map(jax.numpy.copy, state)
        return float(step(fresh.replace(step=fresh.step + step_index), batch)[1]["loss"])

    at_0, again, at_1 = first_loss(0), first_loss(0), first_loss(1)
    assert abs(at_0 - deterministic) > 1e-2 and abs(at_1 - deterministic) > 1e-2
    assert at_0 == again  # bitwise: the masks are a function of the state and step
    assert abs(at_1 - at_0) > 1e-3  # another step, other masks
