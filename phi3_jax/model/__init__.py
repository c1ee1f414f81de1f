"""The Phi-3 model: a Flax linen decoder used as a pure function of a plain parameter pytree."""

from phi3_jax.model.transformer import (
    Phi3,
    abstract_params,
    decode,
    hidden_states,
    init_cache,
    init_params,
    lm_head_logits,
    logical_axes,
    logits,
    param_count,
)

__all__ = [
    "Phi3",
    "abstract_params",
    "decode",
    "hidden_states",
    "init_cache",
    "init_params",
    "lm_head_logits",
    "logical_axes",
    "logits",
    "param_count",
]
