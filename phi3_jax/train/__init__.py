"""Training: the state, the optimizer, and the jitted train and eval steps over a device mesh."""

from phi3_jax.train.optim import learning_rate_schedule, make_optimizer, weight_decay_mask
from phi3_jax.train.state import (
    TrainState,
    abstract_state,
    init_state,
    param_shardings,
    state_shardings,
)
from phi3_jax.train.step import (
    batch_shardings,
    check_batch,
    eval_step,
    loss_and_grads,
    make_eval_step,
    make_train_step,
    train_step,
)

__all__ = [
    "TrainState",
    "abstract_state",
    "batch_shardings",
    "check_batch",
    "eval_step",
    "init_state",
    "learning_rate_schedule",
    "loss_and_grads",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "param_shardings",
    "state_shardings",
    "train_step",
    "weight_decay_mask",
]
