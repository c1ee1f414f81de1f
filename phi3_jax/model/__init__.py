"""The Phi-3 models: Flax linen decoders used as pure functions of a plain parameter pytree
(`functional`), the architecture chosen in one table (`architectures`)."""

from phi3_jax.model.functional import (
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
from phi3_jax.model.transformer import Phi3

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
