"""Checkpointed state across meshes, non-finite updates and greedy decoding with the cache:
in-process on the 8 emulated CPU devices."""

from __future__ import annotations

import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import packed_batch, run_steps, small_config

from phi3_jax import checkpoint, model, sharding
from phi3_jax.generate import generate
from phi3_jax.train import loop
from phi3_jax.train import state as state_lib
from phi3_jax.train import step as step_lib


def data_iterator():
    """A small real grain iterator: its state is saved beside the train state."""
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def config_on(mesh=(1, 1, 1), **train_overrides):
    """train_fixtures' small config with 2 layers of width 64 (quicker to compile)."""
    config = small_config(mesh, **train_overrides)
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128)
    return config


def test_state_saved_on_2x4x1_restores_on_8x1x1_and_one_device(tmp_path):
    source = config_on(mesh=(2, 4, 1))
    _, _, state = run_steps(source, steps=2)
    saved_iterator = data_iterator()
    next(saved_iterator)
    manager = checkpoint.make_manager(str(tmp_path), source)
    checkpoint.save(manager, 2, state, saved_iterator, source, "tokenizer fingerprint")
    manager.wait_until_finished()
    manager.close()
    expected = run_steps(source, initial=state, steps=1)[0][0]

    for target in ((8, 1, 1), (1, 1, 1)):
        config = config_on(mesh=target)
        devices = jax.devices()[: int(np.prod(target))]
        mesh = sharding.make_mesh(config.mesh, devices)
        iterator = data_iterator()
        manager = checkpoint.make_manager(str(tmp_path), config)
        restored, step = checkpoint.restore_latest(
            manager,
            state_lib.abstract_state(config, mesh),
            iterator,
            config,
            "tokenizer fingerprint",
        )
        manager.close()
        assert step == 2 and int(restored.step) == 2 and next(iterator) == 1
        wanted = state_lib.state_shardings(config, mesh)
        for leaf, sharding_ in zip(
            jax.tree.leaves(restored.params), jax.tree.leaves(wanted.params), strict=True
        ):
            assert leaf.sharding == sharding_
        got = run_steps(config, devices, initial=restored, steps=1)[0][0]
        assert abs(got["loss"] - expected["loss"]) <= 1e-6, target
        assert abs(got["grad_norm"] - expected["grad_norm"]) <= 1e-6, target


def poisoned(state):
    """The state with one embedding entry NaN: the next loss and gradient are NaN."""
    params = jax.tree.map(lambda x: x, state.params)
    embedding = params["embed_tokens"]["embedding"]
    params["embed_tokens"]["embedding"] = embedding.at[3, 0].set(jnp.nan)
    return state.replace(params=params)


def test_on_nan_skip_keeps_the_state_and_counts_the_step():
    config = config_on(on_nan="skip")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = poisoned(state_lib.init_state(config, mesh))
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    step = step_lib.make_train_step(config, mesh)
    batch = packed_batch(config)
    batch["tokens"][0, 0] = 3  # the poisoned row
    new, m = step(state, batch)
    assert bool(m["skipped"]) and not np.isfinite(float(m["loss"]))
    assert int(new.step) == 1
    after = jax.tree.map(np.asarray, (new.params, new.opt_state))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_is_reported_with_its_step():
    config = small_config()
    log = []
    with pytest.raises(loop.NonFiniteError, match=r"non-finite loss=nan grad_norm=nan at step 7"):
        loop._check_finite(config, 7, {"loss": float("nan"), "grad_norm": float("nan")}, log.append)
    config.train.on_nan = "skip"
    loop._check_finite(config, 8, {"loss": 2.0, "grad_norm": float("inf")}, log.append)
    assert log == [
        "non-finite loss=2.0 grad_norm=inf at step 8: update skipped (train.on_nan=skip)"
    ]


def greedy_by_recomputing(config, params, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens, each from the logits of the whole sequence so far (no cache). The sequence
    sits in a fixed-length buffer (one compilation): causal attention ignores what follows."""
    logits = jax.jit(functools.partial(model.logits, config))
    tokens = np.zeros((1, len(prompt) + n), np.int32)
    tokens[0, : len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + n):
        tokens[0, i] = int(jnp.argmax(logits(params, tokens)[0, i - 1]))
    return tokens[0, len(prompt) :].tolist()


def test_greedy_generation_with_the_cache_equals_recomputing():
    config = config_on()
    # Sharper logits than at init, so greedy choices are not near-ties.
    params = jax.tree.map(lambda x: 8 * x, model.init_params(config, jax.random.key(1)))
    prompt = [1, 17, 230, 45, 9]
    cached = generate(config, params, prompt, 12)
    assert cached == greedy_by_recomputing(config, params, prompt, 12)
    assert len(set(cached)) > 1
