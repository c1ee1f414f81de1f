"""A tiny Phi-3 for tests and the CPU demo (`make train`: the bundled corpus on 2 CPU cores)."""

from configs import base
from phi3_jax import config as config_lib

# The CPU demo's run: 150 steps of 16 rows of 128 tokens (307K tokens, about 1.2 passes over the
# phase-1 web text before phase 2 mixes in the stricter web subset and the synthetic textbooks),
# a learning rate high enough for a 9M model to learn visibly in that budget.
DEMO = dict(
    # Projections over one token axis: the CPU step's weight gradients without layout copies.
    model=dict(flat_projections=True),
    train=dict(steps=150, global_batch_size=16, seq_len=128),
    optim=dict(lr=3e-3, warmup_steps=15),
    data=dict(phase2_start_step=100, num_workers=1, eval_batches=2),
    log=dict(every_steps=10),
    eval=dict(every_steps=50),
    checkpoint=dict(every_steps=50),
)


def get_config(arg: str | None = None):
    if arg:
        raise config_lib.ConfigError(f"unknown argument {arg!r}; the tiny config takes none")
    config = base.get_config("tiny")
    for section, values in DEMO.items():
        config[section].update(values)
    return config
