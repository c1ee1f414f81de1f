"""The configuration schema: defaults for every key, and validation with one-line errors.

A run's configuration is one `ml_collections.ConfigDict`. `default_config()` defines every key (the
schema: overriding a key that is not here is an error); `configs/*.py` fill in a model variant and
its recipe; each entry point, once the command line's overrides are in, calls `freeze()`, which
validates the values (naming the key at fault) and hands on a `FrozenConfigDict`; a changed config
is a new one (`replace()`), validated and frozen again. One module per section, its defaults beside its validation: `model`, `data`, `parallel`
(mesh, sharding), `train` (train, optim), `posttrain` (sft, dpo), `loop` (checkpoint, log, eval);
`schema` puts them together and reads and writes the JSON saved beside checkpoints.
"""

from phi3_jax.config.checks import ConfigError
from phi3_jax.config.data import (
    DATA_FORMATS,
    ON_BAD_RECORD,
    PACKINGS,
    TOKENIZER_KINDS,
    data_source,
    default_data_config,
    require_training_data,
    validate_data,
)
from phi3_jax.config.loop import (
    ON_SAVE_ERROR,
    default_checkpoint_config,
    default_eval_config,
    default_log_config,
    validate_loop,
)
from phi3_jax.config.model import (
    ARCHITECTURES,
    ATTENTION_IMPLEMENTATIONS,
    MODEL_DTYPES,
    REMAT_POLICIES,
    ROPE_SCALINGS,
    default_model_config,
    head_dim,
    validate_model,
)
from phi3_jax.config.parallel import (
    MESH_AXES,
    default_mesh_config,
    default_sharding_config,
    rule_mesh_axes,
    validate_mesh,
    validate_sharding,
)
from phi3_jax.config.posttrain import (
    DPO_LOSSES,
    TOO_LONG,
    default_dpo_config,
    default_sft_config,
    validate_posttrain,
)
from phi3_jax.config.schema import (
    NAMED_MAPS,
    REMOVED_KEYS,
    VARIANTS,
    default_config,
    freeze,
    from_json,
    replace,
    to_json,
    validate,
)
from phi3_jax.config.train import (
    CPU_DOT_FUSIONS,
    OBJECTIVES,
    ON_NAN,
    SCHEDULES,
    WEIGHT_DECAY_MASKS,
    default_optim_config,
    default_train_config,
    validate_optim,
    validate_train,
)

__all__ = [
    "ARCHITECTURES",
    "ATTENTION_IMPLEMENTATIONS",
    "CPU_DOT_FUSIONS",
    "DATA_FORMATS",
    "DPO_LOSSES",
    "MESH_AXES",
    "MODEL_DTYPES",
    "NAMED_MAPS",
    "OBJECTIVES",
    "ON_BAD_RECORD",
    "ON_NAN",
    "ON_SAVE_ERROR",
    "PACKINGS",
    "REMAT_POLICIES",
    "REMOVED_KEYS",
    "ROPE_SCALINGS",
    "SCHEDULES",
    "TOKENIZER_KINDS",
    "TOO_LONG",
    "VARIANTS",
    "WEIGHT_DECAY_MASKS",
    "ConfigError",
    "data_source",
    "default_checkpoint_config",
    "default_config",
    "default_data_config",
    "default_dpo_config",
    "default_eval_config",
    "default_log_config",
    "default_mesh_config",
    "default_model_config",
    "default_optim_config",
    "default_sft_config",
    "default_sharding_config",
    "default_train_config",
    "freeze",
    "from_json",
    "replace",
    "require_training_data",
    "head_dim",
    "rule_mesh_axes",
    "to_json",
    "validate",
    "validate_data",
    "validate_loop",
    "validate_mesh",
    "validate_model",
    "validate_optim",
    "validate_posttrain",
    "validate_sharding",
    "validate_train",
]
