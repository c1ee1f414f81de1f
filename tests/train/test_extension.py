"""Context extension: a short-context run's params, extended with checkpoint.init_from and
checkpoint.extend_context, start the long run exactly, under the long run's LongRoPE factors and
context; without extend_context the checkpoint's own context is kept (a converted model trains
as it was saved)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from train_fixtures import run_config

from phi3_jax import config as config_lib
from phi3_jax import metrics, sharding
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.train import loop, restore
from phi3_jax.train import state as state_lib

HALF_HEAD = 8  # tiny-sized model below: 64 / 4 heads = 16 per head
SMALL_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2}


def parent_config():
    """A tiny model trained 2 steps at 32 tokens (a 64-token context, plain RoPE)."""
    config = run_config(**{"train.steps": 2, "optim.warmup_steps": 1, "eval.every_steps": 0})
    config.model.update(
        SMALL_MODEL, max_position_embeddings=64, original_max_position_embeddings=64
    )
    config.checkpoint.every_steps = 2
    return config_lib.validate(config)


def extension_config(parent_workdir: str, extend: bool = True):
    """The long variant: LongRoPE factors (PI-like, 4x on every pair past 64 tokens), 256
    positions, 128-token rows."""
    config = run_config(**{"train.steps": 2, "optim.warmup_steps": 1, "eval.every_steps": 0})
    config.model.update(
        SMALL_MODEL,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        rope_scaling="longrope",
        rope_short_factor=(1.0,) * HALF_HEAD,
        rope_long_factor=(4.0,) * HALF_HEAD,
    )
    config.train.seq_len = 128
    config.checkpoint.update(init_from=parent_workdir, extend_context=extend)
    return config_lib.validate(config)


def assert_params_equal(expected, got) -> None:
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(got), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_extend_context_switches_the_context_and_keeps_the_params_exactly(tmp_path):
    parent = parent_config()
    mesh = sharding.make_mesh(parent.mesh)
    parent_params = jax.device_get(state_lib.init_state(parent, mesh).params)
    path = str(tmp_path / "params")
    params_checkpoint.save_params(path, parent, parent_params)

    config = loop.with_init_model(extension_config(path))
    model = config.model
    assert (model.rope_scaling, model.max_position_embeddings) == ("longrope", 256)
    assert model.original_max_position_embeddings == 64
    assert tuple(model.rope_long_factor) == (4.0,) * HALF_HEAD
    assert_params_equal(parent_params, restore.restore_sharded_params(path, config, mesh))
    # Without extend_context the checkpoint's context stands (what a converted model needs), so
    # the long rows do not fit it: one line says so.
    with pytest.raises(config_lib.ConfigError, match="exceeds model.max_position_embeddings=64"):
        loop.with_init_model(extension_config(path, extend=False))


@pytest.mark.slow  # two in-process runs (~1 min idle)
def test_a_run_extends_a_trained_run_from_its_last_params(tmp_path):
    parent = str(tmp_path / "parent")
    loop.train(parent_config(), parent, log=lambda _: None)
    _, parent_params, step = restore.restore_params_of_run(parent)
    assert step == 2
    config = loop.with_init_model(extension_config(parent))
    mesh = sharding.make_mesh(config.mesh)
    assert_params_equal(parent_params, restore.restore_sharded_params(parent, config, mesh))

    lines = []
    workdir = str(tmp_path / "long")
    loop.train(extension_config(parent), workdir, log=lines.append)
    assert f"starting from the params checkpoint {parent}" in lines
    saved, _, _ = restore.restore_params_of_run(workdir)
    assert saved.model.rope_scaling == "longrope" and saved.train.seq_len == 128
    assert [m["step"] for m in metrics.read_metrics(workdir) if "loss" in m] == [1, 2]
