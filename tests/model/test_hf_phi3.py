"""Logits against transformers' Phi3ForCausalLM (fp32, random weights, loaded through load_hf)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.torch
from hf_fixtures import LONGROPE, hf_logits, random_hf_model, random_tokens

from configs import base
from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import hf

TOLERANCE = 1e-4


def load_fp32(path):
    config, params = hf.load_hf(path)
    config = config_lib.replace(config, model=dict(dtype="float32"))
    return config, params


def assert_parity(hf_model, tmp_path, length, batch=2):
    hf_model.save_pretrained(tmp_path / "hf")
    config, params = load_fp32(tmp_path / "hf")
    tokens = random_tokens(hf_model.config.vocab_size, batch, length)
    ours = np.asarray(phi3.logits(config, params, tokens))
    theirs = hf_logits(hf_model, tokens)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
    return config


def test_mha_mini_like(tmp_path):
    config = assert_parity(random_hf_model(), tmp_path, length=16)
    assert config.model.num_kv_heads == config.model.num_heads == 4


def test_gqa_medium_like(tmp_path):
    hf_model = random_hf_model(hidden_size=128, num_attention_heads=8, num_key_value_heads=2)
    config = assert_parity(hf_model, tmp_path, length=16)
    assert (config.model.num_heads, config.model.num_kv_heads) == (8, 2)


@pytest.mark.parametrize("length", [24, 32, 40], ids=["short", "at-original", "long"])
def test_longrope_real_factors_both_sides(tmp_path, length):
    config = assert_parity(random_hf_model(**LONGROPE), tmp_path, length=length)
    assert config.model.rope_scaling == "longrope"
    assert config.model.rope_long_factor == base.LONGROPE_LONG_FACTOR


def test_sliding_window(tmp_path):
    config = assert_parity(random_hf_model(sliding_window=5), tmp_path, length=16)
    assert config.model.sliding_window == 5
    # The window bites: without it the logits differ.
    hf_model = random_hf_model(sliding_window=5)
    tokens = random_tokens(128, 2, 16)
    config = config_lib.replace(config, model=dict(sliding_window=0))
    _, params = hf.load_hf(tmp_path / "hf")
    unwindowed = np.asarray(phi3.logits(config, params, tokens))
    assert np.abs(unwindowed - hf_logits(hf_model, tokens)).max() > 1e-2


def test_hub_original_su_config(tmp_path):
    """A config.json as on the hub in April 2024: rope_scaling type "su", rope_theta on top."""
    hf_model = random_hf_model(**LONGROPE)
    directory = tmp_path / "hub"
    os.makedirs(directory)
    hub_config = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "vocab_size": 128,
        "hidden_size": 192,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 1024,
        "original_max_position_embeddings": 32,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "su",
            "short_factor": list(base.LONGROPE_SHORT_FACTOR),
            "long_factor": list(base.LONGROPE_LONG_FACTOR),
        },
        "rms_norm_eps": 1e-05,
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.39.3",
    }
    (directory / "config.json").write_text(json.dumps(hub_config))
    safetensors.torch.save_file(hf_model.state_dict(), directory / "model.safetensors")
    config, params = load_fp32(directory)
    assert config.model.rope_scaling == "longrope"
    for length in (24, 40):
        tokens = random_tokens(128, 2, length)
        ours = np.asarray(phi3.logits(config, params, tokens))
        np.testing.assert_allclose(ours, hf_logits(hf_model, tokens), rtol=0, atol=TOLERANCE)
