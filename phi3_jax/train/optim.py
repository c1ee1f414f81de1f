"""The optimizer: global-norm clipping, then AdamW under a learning-rate schedule.

Everything is optax: the schedules are optax's warmup-cosine and joined linear pieces (WSD), the
weight-decay mask is a pytree of booleans chosen by name in the config.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from phi3_jax import model


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning rate at each optimizer step.

    cosine: linear warmup 0 -> lr, then cosine decay to min_lr_ratio * lr at train.steps.
    wsd: linear warmup 0 -> lr, constant lr, then a linear decay to min_lr_ratio * lr over the
    last optim.decay_steps steps.
    """
    o = config.optim
    end_lr = o.lr * o.min_lr_ratio
    if o.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=o.lr,
            warmup_steps=o.warmup_steps,
            decay_steps=config.train.steps,
            end_value=end_lr,
        )
    decay_start = config.train.steps - o.decay_steps
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, o.lr, o.warmup_steps),
            optax.constant_schedule(o.lr),
            optax.linear_schedule(o.lr, end_lr, o.decay_steps),
        ],
        boundaries=[o.warmup_steps, decay_start],
    )


# Weight matrices and the embedding decay; norm scales and biases (of any rank: Phi-3-small's
# q/k/v biases are [heads, head_dim]) do not.
_DECAYED_LEAVES = ("kernel", "embedding")


def weight_decay_mask(config: ml_collections.ConfigDict):
    """Pytree of bools over the params: True where weight decay applies."""
    choice = config.optim.weight_decay_mask

    def decays(path, _) -> bool:
        if choice == "all":
            return True
        if choice == "no_norms_no_embedding" and path[-1].key == "embedding":
            return False
        return path[-1].key in _DECAYED_LEAVES

    return jax.tree_util.tree_map_with_path(
        decays,
        model.logical_axes(config),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clip by global norm (unless optim.clip_norm is 0), then AdamW with the schedule."""
    o = config.optim
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        mask=weight_decay_mask(config),
    )
    if not o.clip_norm:
        return adamw
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
