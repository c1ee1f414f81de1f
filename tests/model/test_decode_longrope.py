"""Cached LongRoPE decoding across original_max_position_embeddings: at every step each row's
logits are transformers' full forward over that row's sequence so far (fp32, <= 1e-4)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from hf_fixtures import LONGROPE, hf_logits, random_hf_model, random_tokens

from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import hf

TOLERANCE = 1e-4
# Prompts of 20, 29 and 31 tokens and 14 tokens decoded after them: each row starts below the
# original length (32) and crosses it at its own step (13, 4 and 2), recomputing its cache.
PROMPT_LENGTHS = (20, 29, 31)
STEPS = 14


@pytest.mark.parametrize("padding", ["left", pytest.param("right", marks=pytest.mark.slow)])
def test_cached_longrope_decoding_equals_transformers_across_the_original_length(tmp_path, padding):
    hf_model = random_hf_model(**LONGROPE)
    hf_model.save_pretrained(tmp_path / "hf")
    config, params = hf.load_hf(tmp_path / "hf")
    config = config_lib.replace(config, model=dict(dtype="float32"))
    assert config.model.original_max_position_embeddings == 32
    vocab = config.model.vocab_size
    sequences = [list(random_tokens(vocab, 1, n + STEPS, seed=n)[0]) for n in PROMPT_LENGTHS]
    rows, longest = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS)
    tokens = np.zeros((rows, longest), np.int32)
    for row, n in enumerate(PROMPT_LENGTHS):
        if padding == "left":
            tokens[row, longest - n :] = sequences[row][:n]
        else:
            tokens[row, :n] = sequences[row][:n]
    lengths = np.array(PROMPT_LENGTHS if padding == "right" else [longest] * rows, np.int32)
    start = np.array([longest - n if padding == "left" else 0 for n in PROMPT_LENGTHS], np.int32)
    decode = jax.jit(functools.partial(phi3.decode, config))
    # What generate calls: only each row's last real token's logits go through lm_head.
    decode_last = jax.jit(functools.partial(phi3.decode, config, last_only=True))

    cache = phi3.init_cache(config, rows, longest + STEPS, start)
    only_last, _ = decode_last(params, tokens, cache, lengths)
    logits, cache = decode(params, tokens, cache, lengths)
    last = np.asarray(logits)[np.arange(rows), lengths - 1]
    np.testing.assert_allclose(only_last, last, rtol=0, atol=1e-6)
    crossed = set()
    for step in range(STEPS + 1):
        for row, n in enumerate(PROMPT_LENGTHS):
            sequence = sequences[row][: n + step]
            if len(sequence) > 32:
                crossed.add((row, step))
            theirs = hf_logits(hf_model, np.asarray([sequence]))[0, -1]
            np.testing.assert_allclose(
                last[row], theirs, rtol=0, atol=TOLERANCE, err_msg=f"row {row} step {step}"
            )
        if step == STEPS:
            break
        following = np.array([[sequences[r][n + step]] for r, n in enumerate(PROMPT_LENGTHS)])
        only_last, _ = decode_last(params, following, cache)
        logits, cache = decode(params, following, cache)
        last = np.asarray(logits)[:, -1]
        np.testing.assert_allclose(only_last, last, rtol=0, atol=1e-6)
    # Every row was compared on both sides of the original length.
    assert {row for row, _ in crossed} == set(range(rows))
    assert all((row, 0) not in crossed for row in range(rows))
