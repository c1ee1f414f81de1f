"""The configuration: recipes in configs/ validate; a full-size recipe names its data sources but
leaves their shards to the run, which refuses to start without them in one line naming the key;
each invalid model key is one line naming it; the JSON saved beside checkpoints round-trips."""

from __future__ import annotations

import ml_collections
import pytest
from test_sharding import raises_one_line  # it puts tests/train on the path, for:
from train_fixtures import small_config

from configs import (
    base,
    phi3_dpo,
    phi3_medium,
    phi3_mini,
    phi3_mini_128k,
    phi3_sft,
    phi3_small,
    phi3_tiny,
)
from phi3_jax import config as config_lib
from phi3_jax.train import loop

FULL_SIZE = {"mini": phi3_mini, "mini_128k": phi3_mini_128k, "small": phi3_small}
FULL_SIZE["medium"] = phi3_medium


def test_the_schema_has_no_data_sources():
    data = config_lib.default_config().data
    assert (dict(data.sources), dict(data.phase1), dict(data.phase2)) == ({}, {}, {})


@pytest.mark.parametrize(
    "get_config, arg",
    [
        (phi3_tiny.get_config, None),
        (phi3_small.get_config, "tiny"),
        (phi3_sft.get_config, "tiny"),
        (phi3_sft.get_config, "mini"),
        (phi3_dpo.get_config, "tiny"),
        (phi3_dpo.get_config, "small"),
        *[
            (module.get_config, preset)
            for module in FULL_SIZE.values()
            for preset in (None, *sorted(getattr(module, "PRESETS", phi3_mini.PRESETS)))
        ],
    ],
    ids=lambda x: getattr(x, "__module__", x),
)
def test_every_recipe_validates(get_config, arg):
    config_lib.validate(get_config(arg))


def test_the_test_sizes_train_on_the_bundled_demo_corpus():
    for config in (phi3_tiny.get_config(), phi3_small.get_config("tiny")):
        globs = {name: source.globs for name, source in config.data.sources.items()}
        assert globs == base.DEMO_GLOBS
        assert (dict(config.data.phase1), dict(config.data.phase2)) == (
            base.PHASES["phase1"],
            base.PHASES["phase2"],
        )


@pytest.mark.parametrize("variant", sorted(FULL_SIZE))
def test_a_full_size_recipe_without_its_shards_refuses_to_train(variant, tmp_path):
    config = FULL_SIZE[variant].get_config()
    assert set(config.data.sources) == set(base.DEMO_GLOBS)
    assert (dict(config.data.phase1), dict(config.data.phase2)) == (
        base.PHASES["phase1"],
        base.PHASES["phase2"],
    )
    with pytest.raises(config_lib.ConfigError) as error:
        loop.train(config, str(tmp_path / "run"))
    assert str(error.value) == (
        "data.sources.web.globs='': not set; point --config.data.sources.web.globs at the "
        "shards to train on (phi3_jax.data.prepare and phi3_jax.data.synthetic write them)"
    )
    assert not (tmp_path / "run").exists()


def test_a_phase_2_source_without_shards_is_named_too(tmp_path):
    config = phi3_mini.get_config()
    config.data.sources.web.globs = "data/web/phase1/*.jsonl.zst"
    with pytest.raises(config_lib.ConfigError, match=r"^data\.sources\.synthetic\.globs='': not"):
        loop.train(config, str(tmp_path / "run"))


def test_a_full_size_posttraining_recipe_names_its_one_source(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=r"^data\.sources\.chat\.globs='': not set"):
        loop.train(phi3_sft.get_config("mini"), str(tmp_path / "run"))
    assert phi3_sft.get_config("tiny").data.sources.chat.globs == "data/chat/sft.jsonl.zst"


def test_freeze_validates_once_and_hands_out_a_frozen_config():
    config = phi3_tiny.get_config()
    frozen = config_lib.freeze(config)
    assert isinstance(frozen, ml_collections.FrozenConfigDict)
    assert config_lib.freeze(frozen) is frozen
    assert config_lib.to_json(frozen) == config_lib.to_json(config)
    with pytest.raises(AttributeError, match="immutable"):
        frozen.train.steps = 1
    config.optim.b2 = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"^optim\.b2=1\.0: must lie in \[0, 1\)$"):
        config_lib.freeze(config)


def test_replace_is_a_new_validated_frozen_config():
    frozen = config_lib.freeze(phi3_tiny.get_config())
    changed = config_lib.replace(frozen, mesh=dict(data=2, fsdp=4), model=dict(dtype="bfloat16"))
    assert isinstance(changed, ml_collections.FrozenConfigDict)
    assert (changed.mesh.data, changed.mesh.fsdp, changed.model.dtype) == (2, 4, "bfloat16")
    assert (frozen.mesh.data, frozen.mesh.fsdp, frozen.model.dtype) == (1, -1, "float32")
    assert changed.model.hidden_size == frozen.model.hidden_size
    with pytest.raises(config_lib.ConfigError, match=r"^mesh\.data=0: must be a positive"):
        config_lib.replace(frozen, mesh=dict(data=0))
    with pytest.raises(config_lib.ConfigError, match=r"^mesh\.model=2: unknown key$"):
        config_lib.replace(frozen, mesh=dict(model=2))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"mesh.data": 0}, r"^mesh\.data=0: must be a positive integer or -1"),
        ({"mesh.data": -1, "mesh.fsdp": -1}, r"^mesh=.*: at most one axis may be -1"),
        (
            {"train.microbatches": 3},
            r"^train\.microbatches=3: must divide train\.global_batch_size=8",
        ),
        ({"train.seq_len": 4096}, r"^train\.seq_len=4096: exceeds model\.max_position_embeddings"),
        ({"train.z_loss": -1.0}, r"^train\.z_loss=-1\.0: must be >= 0"),
        ({"optim.b2": 1.0}, r"^optim\.b2=1\.0: must lie in \[0, 1\)"),
        ({"optim.schedule": "linear"}, r"^optim\.schedule='linear': must be one of cosine, wsd"),
        ({"optim.weight_decay_mask": "some"}, r"^optim\.weight_decay_mask='some': must be one of"),
        (
            {"optim.schedule": "wsd", "optim.warmup_steps": 6, "optim.decay_steps": 5},
            r"^optim\.warmup_steps=6: warmup \+ decay_steps = 11 exceeds train\.steps=10",
        ),
        (
            {"sharding.logical_axis_rules": (("embed", "model"),)},
            r"^sharding\.logical_axis_rules=\('embed', 'model'\): unknown mesh axis 'model'",
        ),
    ],
)
def test_config_validation(overrides, pattern):
    config = small_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with raises_one_line(pattern):
        config_lib.validate(config)


# The model section (config/model.py) and the variants.


INVALID = [
    ("hidden_size", 0, "model.hidden_size=0: must be a positive integer"),
    ("num_layers", -2, "model.num_layers=-2: must be a positive integer"),
    ("num_heads", 3, "model.num_heads=3: must divide model.hidden_size=128"),
    ("num_kv_heads", 3, "model.num_kv_heads=3: must divide model.num_heads=4"),
    ("dtype", "float8", "model.dtype='float8': must be one of"),
    ("remat", "some", "model.remat='some': must be one of"),
    ("rope_scaling", "yarn", "model.rope_scaling='yarn': must be one of"),
    ("sliding_window", -1, "model.sliding_window=-1: must be >= 0"),
    ("eos_token_id", 40000, "model.eos_token_id=40000: must lie in [0, 32064)"),
    ("rms_norm_eps", 0.0, "model.rms_norm_eps=0.0: must be positive"),
    ("original_max_position_embeddings", 1024, "model.original_max_position_embeddings=1024:"),
]


@pytest.mark.parametrize("key, value, message", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_model_configs(key, value, message):
    config = base.get_config("tiny")
    config.model[key] = value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_longrope_factor_lists_of_wrong_length():
    config = base.get_config("mini_128k")
    config.model.rope_long_factor = config.model.rope_long_factor[:-1]
    with pytest.raises(config_lib.ConfigError, match=r"^model\.rope_long_factor=.*needs .* 48"):
        config_lib.validate(config)


def test_unknown_variant():
    with pytest.raises(config_lib.ConfigError, match=r"^variant='huge': unknown"):
        base.get_config("huge")


def test_config_json_round_trip():
    config = base.get_config("mini_128k")
    again = config_lib.from_json(config_lib.to_json(config))
    assert again.model.rope_long_factor == base.LONGROPE_LONG_FACTOR
    assert config_lib.to_json(again) == config_lib.to_json(config)
    with pytest.raises(config_lib.ConfigError, match=r"^model\.num_experts=8: unknown key"):
        config_lib.from_json('{"model": {"num_experts": 8}}')


def test_every_named_variant_is_a_valid_variant_key():
    assert set(base.MODELS) <= set(config_lib.VARIANTS)
    config = base.get_config("tiny")
    config.variant = "huge"
    with pytest.raises(config_lib.ConfigError, match=r"^variant='huge': unknown; expected one of"):
        config_lib.validate(config)
