"""load_hf on config.json files built from transformers' own Phi3Config defaults (its full
`to_dict()`): every one Phi3ForCausalLM runs loads with its logits (fp32, <= 1e-4), and only a
field that would change the numbers is refused, by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import hf_logits, random_tokens

from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import hf

# Small dims; everything else is Phi3Config's default (original_max_position_embeddings 4096,
# bos 1, eos 32000, rope_parameters default), except what each case sets. pad_token_id is the
# embedding's padding_idx in transformers, so it must lie in the vocabulary for it to run.
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
)
ACCEPTED = {
    "defaults": ({}, {"original_max_position_embeddings": 64, "eos_token_id": -1}),
    "eos-list-no-bos": (
        {"eos_token_id": [2, 7], "bos_token_id": None},
        {"eos_token_id": 2, "bos_token_id": -1},
    ),
    "no-pad": ({"pad_token_id": None, "eos_token_id": 5}, {"pad_token_id": 5}),
    "tied": ({"tie_word_embeddings": True}, {}),
    "gqa-window-bias-dropout": (
        {
            "num_key_value_heads": 2,
            "sliding_window": 6,
            "attention_bias": True,
            "resid_pdrop": 0.1,
            "embd_pdrop": 0.1,
            "attention_dropout": 0.1,
        },
        {"num_kv_heads": 2, "sliding_window": 6},
    ),
    "head-dim-as-derived": ({"head_dim": 16}, {}),
}


def hf_directory(tmp_path, **overrides) -> tuple[str, transformers.Phi3ForCausalLM]:
    """A random Phi3ForCausalLM's weights under the full `to_dict()` of its Phi3Config."""
    torch.manual_seed(0)
    config = transformers.Phi3Config(**{**SMALL, **overrides})
    config._attn_implementation = "eager"
    model = transformers.Phi3ForCausalLM(config).eval()
    directory = str(tmp_path / "hf")
    model.save_pretrained(directory)
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config.to_dict(), f)
    return directory, model


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_transformers_default_configs_load_with_their_logits(tmp_path, case):
    overrides, expected = ACCEPTED[case]
    directory, hf_model = hf_directory(tmp_path, **overrides)
    config, params = hf.load_hf(directory)
    for key, value in expected.items():
        assert config.model[key] == value, key
    config = config_lib.replace(config, model=dict(dtype="float32"))
    tokens = random_tokens(128, 2, 12)
    ours = np.asarray(phi3.logits(config, params, tokens))
    np.testing.assert_allclose(ours, hf_logits(hf_model, tokens), rtol=0, atol=1e-4)


LONGROPE_FACTORS = {"rope_type": "longrope", "short_factor": [1.1] * 8, "long_factor": [3.0] * 8}


def test_longrope_original_length_above_the_maximum(tmp_path):
    """transformers runs it: short factors throughout, attention factor 1."""
    directory, hf_model = hf_directory(
        tmp_path, original_max_position_embeddings=128, rope_parameters=dict(LONGROPE_FACTORS)
    )
    config, params = hf.load_hf(directory)
    assert config.model.original_max_position_embeddings == 128
    config = config_lib.replace(config, model=dict(dtype="float32"))
    tokens = random_tokens(128, 2, 40)
    ours = np.asarray(phi3.logits(config, params, tokens))
    np.testing.assert_allclose(ours, hf_logits(hf_model, tokens), rtol=0, atol=1e-4)


def test_rope_type_yarn_is_longrope_as_in_transformers(tmp_path):
    """Phi3Config turns rope type su or yarn into longrope: a config.json that says yarn."""
    directory, hf_model = hf_directory(
        tmp_path, original_max_position_embeddings=32, rope_parameters=dict(LONGROPE_FACTORS)
    )
    with open(f"{directory}/config.json") as f:
        saved = json.load(f)
    assert saved["rope_parameters"]["rope_type"] == "longrope"
    saved["rope_parameters"]["rope_type"] = "yarn"
    with open(f"{directory}/config.json", "w") as f:
        json.dump(saved, f)
    config, params = hf.load_hf(directory)
    assert config.model.rope_scaling == "longrope"
    config = config_lib.replace(config, model=dict(dtype="float32"))
    for length in (20, 40):  # both sides of the original length
        tokens = random_tokens(128, 2, length)
        ours = np.asarray(phi3.logits(config, params, tokens))
        np.testing.assert_allclose(ours, hf_logits(hf_model, tokens), rtol=0, atol=1e-4)


REFUSED = {
    "head_dim": ({"head_dim": 32}, "head_dim=32 differs from hidden_size // num_attention_heads"),
    "partial_rotary_factor": ({"partial_rotary_factor": 0.5}, "partial_rotary_factor != 1"),
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act='gelu', Phi-3 uses silu"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_fields_that_change_the_numbers_are_refused_by_name(tmp_path, case):
    overrides, message = REFUSED[case]
    directory, _ = hf_directory(tmp_path, **overrides)
    with pytest.raises(hf.HFFormatError, match=f"^{directory}: .*{message}"):
        hf.load_hf(directory)
