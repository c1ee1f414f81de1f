"""LongRoPE in packed rows: each document takes the factors Hugging Face's rule gives it alone.

A row packs a short document (within the original context, 32) and a long one (past it); the
logits of each equal transformers' forward over that document by itself (fp32, <= 1e-4), so the
short one keeps the short factors beside the long one (the "mixed context window" of training).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hf_fixtures import LONGROPE, hf_logits, random_hf_model, random_tokens

from phi3_jax import config as config_lib
from phi3_jax import model as phi3
from phi3_jax.model import hf, rope

TOLERANCE = 1e-4
SHORT, LONG, PADDING = 20, 40, 4


def test_document_lengths_of_packed_rows():
    segment_ids = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    positions = jnp.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    lengths = rope.document_lengths(positions, segment_ids)
    np.testing.assert_array_equal(lengths, [[3, 3, 3, 2, 2, 1], [6, 6, 6, 6, 6, 6]])


def test_each_document_of_a_packed_row_gets_its_own_factors(tmp_path):
    hf_model = random_hf_model(**LONGROPE)
    hf_model.save_pretrained(tmp_path / "hf")
    config, params = hf.load_hf(tmp_path / "hf")
    config = config_lib.replace(config, model=dict(dtype="float32"))
    original = config.model.original_max_position_embeddings
    assert SHORT <= original < LONG
    vocab = config.model.vocab_size
    short = random_tokens(vocab, 1, SHORT, seed=1)[0]
    long = random_tokens(vocab, 1, LONG, seed=2)[0]
    tokens = np.concatenate([short, long, np.zeros(PADDING, np.int32)])[None]
    segment_ids = np.array([[1] * SHORT + [2] * LONG + [0] * PADDING])
    positions = np.array([list(range(SHORT)) + list(range(LONG)) + [0] * PADDING])

    packed = np.asarray(
        phi3.logits(config, params, tokens, positions=positions, segment_ids=segment_ids)
    )[0]

    np.testing.assert_allclose(
        packed[:SHORT], hf_logits(hf_model, short[None])[0], rtol=0, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        packed[SHORT : SHORT + LONG], hf_logits(hf_model, long[None])[0], rtol=0, atol=TOLERANCE
    )
    # HF's rule over the whole row as one call gives the short document the long factors: the
    # two rules differ on it, and agree on the long one.
    per_document, _ = rope.rotary_cos_sin(config.model, positions, segment_ids=segment_ids)
    per_call, _ = rope.rotary_cos_sin(config.model, positions)
    assert not np.allclose(per_document[0, :SHORT], per_call[0, :SHORT], atol=TOLERANCE)
    np.testing.assert_array_equal(per_document[0, SHORT:-PADDING], per_call[0, SHORT:-PADDING])
