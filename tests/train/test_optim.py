"""The optimizer against closed forms: schedules, the weight-decay mask, one AdamW step."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from train_fixtures import small_config

from configs import base
from phi3_jax import model, train


def schedule_config(schedule: str):
    config = small_config()
    config.train.steps = 110
    config.optim.update(schedule=schedule, warmup_steps=10, decay_steps=20, min_lr_ratio=0.1)
    return config


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),
        (5, 5e-4),
        (10, 1e-3),
        (60, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 50 / 100))),
        (85, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 75 / 100))),
        (110, 1e-4),
        (500, 1e-4),
    ],
)
def test_warmup_cosine(step, expected):
    lr = train.learning_rate_schedule(schedule_config("cosine"))
    assert float(lr(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.0), (5, 5e-4), (10, 1e-3), (50, 1e-3), (90, 1e-3), (100, 5.5e-4), (110, 1e-4)],
)
def test_warmup_stable_decay(step, expected):
    lr = train.learning_rate_schedule(schedule_config("wsd"))
    assert float(lr(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def _decayed(choice: str) -> set[str]:
    config = small_config()
    config.optim.weight_decay_mask = choice
    flat = jax.tree_util.tree_leaves_with_path(train.weight_decay_mask(config))
    return {jax.tree_util.keystr(p, simple=True, separator="/") for p, decays in flat if decays}


MATRICES = {
    "layers/mlp/down_proj/kernel",
    "layers/mlp/gate_proj/kernel",
    "layers/mlp/up_proj/kernel",
    "layers/self_attn/k_proj/kernel",
    "layers/self_attn/o_proj/kernel",
    "layers/self_attn/q_proj/kernel",
    "layers/self_attn/v_proj/kernel",
    "lm_head/kernel",
}
NORMS = {"layers/input_layernorm/scale", "layers/post_attention_layernorm/scale", "norm/scale"}


def test_weight_decay_masks():
    assert _decayed("all") == MATRICES | NORMS | {"embed_tokens/embedding"}
    assert _decayed("no_norms") == MATRICES | {"embed_tokens/embedding"}
    assert _decayed("no_norms_no_embedding") == MATRICES


def test_biases_never_decay_except_with_all():
    """Phi-3-small's biases (q/k/v biases are 2-D) and LayerNorm parameters are not decayed."""
    config = base.get_config("small_tiny")
    config.optim.weight_decay_mask = "no_norms"
    flat = jax.tree_util.tree_leaves_with_path(train.weight_decay_mask(config))
    decayed = {p[-1].key for p, decays in flat if decays}
    skipped = {p[-1].key for p, decays in flat if not decays}
    assert decayed == {"kernel", "embedding"}
    assert skipped == {"bias", "scale"}


def test_one_adamw_step_against_the_formula():
    config = small_config()
    config.optim.update(lr=2e-3, b1=0.8, b2=0.9, eps=1e-7, weight_decay=0.5, clip_norm=0.5)
    params = model.init_params(config, jax.random.key(1))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    grads = treedef.unflatten([rng.normal(size=x.shape).astype(np.float32) for x in leaves])
    tx = train.make_optimizer(config)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)

    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(grads)))
    scale = 0.5 / norm  # clipped to norm 0.5
    decays = jax.tree.leaves(train.weight_decay_mask(config))
    for got, g, p, decay in zip(
        jax.tree.leaves(updates), jax.tree.leaves(grads), leaves, decays, strict=True
    ):
        g = np.asarray(g, np.float64) * scale
        m_hat = (1 - 0.8) * g / (1 - 0.8)
        v_hat = (1 - 0.9) * g * g / (1 - 0.9)
        adam = m_hat / (np.sqrt(v_hat) + 1e-7)
        want = -2e-3 * (adam + (0.5 * np.asarray(p, np.float64) if decay else 0.0))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
