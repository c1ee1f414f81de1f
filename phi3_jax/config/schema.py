"""The whole run configuration: its sections put together, validated, saved and read back."""

from __future__ import annotations

import json

import ml_collections

from phi3_jax.config import data, loop, model, parallel, posttrain, train
from phi3_jax.config.checks import ConfigError, fail

# Keys that existed once: setting one is an error that says what replaced it.
REMOVED_KEYS = {
    "data.tokenizer_path": "removed; name the tokenizer with data.tokenizer.kind "
    f"({' | '.join(data.TOKENIZER_KINDS)}) and data.tokenizer.path",
}
# The named variants of configs/base.py, and "hf" (a model read from a Hugging Face config).
VARIANTS = ("tiny", "mini", "mini_128k", "small", "small_tiny", "medium", "hf")


def default_config() -> ml_collections.ConfigDict:
    """Every key a run may set, with its default."""
    config = ml_collections.ConfigDict()
    # Which named variant of configs/ this came from (one of VARIANTS).
    config.variant = "tiny"
    config.model = model.default_model_config()
    config.data = data.default_data_config()
    config.mesh = parallel.default_mesh_config()
    config.sharding = parallel.default_sharding_config()
    config.train = train.default_train_config()
    config.optim = train.default_optim_config()
    config.sft = posttrain.default_sft_config()
    config.dpo = posttrain.default_dpo_config()
    config.checkpoint = loop.default_checkpoint_config()
    config.log = loop.default_log_config()
    config.eval = loop.default_eval_config()
    return config


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate a whole run configuration; returns it for chaining."""
    if config.variant not in VARIANTS:
        fail("variant", config.variant, f"unknown; expected one of {', '.join(VARIANTS)}")
    model.validate_model(config.model)
    data.validate_data(config.data)
    parallel.validate_mesh(config.mesh)
    parallel.validate_sharding(config.sharding)
    train.validate_train(config)
    posttrain.validate_posttrain(config)
    train.validate_optim(config)
    loop.validate_loop(config)
    return config


def freeze(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """`config` validated and frozen: what an entry point hands on, once the command line's
    overrides are in. A frozen config was validated when it was frozen: it is returned as is."""
    if isinstance(config, ml_collections.FrozenConfigDict):
        return config
    return ml_collections.FrozenConfigDict(validate(config))


def replace(config: ml_collections.ConfigDict, **sections: dict) -> ml_collections.FrozenConfigDict:
    """A copy of `config` with some keys of its sections changed (`replace(config,
    mesh=dict(data=1))`; a named map such as data.sources is replaced whole), validated and
    frozen. `config` itself is left as it is."""
    changed = ml_collections.ConfigDict(config.to_dict())
    _merge(changed, sections, "")
    return freeze(changed)


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved configuration as JSON (saved beside checkpoints)."""
    return config.to_json(indent=2, sort_keys=True)


# Maps whose keys are names a run chooses (its sources), not schema keys: taken as saved.
NAMED_MAPS = ("data.sources", "data.phase1", "data.phase2")


def _merge(target: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in REMOVED_KEYS:
            raise ConfigError(f"{name}={value!r}: {REMOVED_KEYS[name]}")
        if key not in target:
            raise ConfigError(f"{name}={value!r}: unknown key")
        if name in NAMED_MAPS:
            target[key] = ml_collections.ConfigDict(value)
        elif isinstance(target[key], ml_collections.ConfigDict):
            _merge(target[key], value, f"{name}.")
        elif isinstance(target[key], tuple):
            target[key] = tuple(value)  # JSON has no tuples
        else:
            target[key] = value


def from_json(text: str) -> ml_collections.FrozenConfigDict:
    """A configuration saved by `to_json`, on top of today's defaults, validated and frozen (a
    changed one is a `replace`)."""
    config = default_config()
    _merge(config, json.loads(text), "")
    return freeze(config)
