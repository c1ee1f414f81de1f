"""The model on its own: parameter counts, packed segments, scan/unroll, remat and flat
projections equivalence, the compute dtype, and cached decoding."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, phi3_medium, phi3_mini, phi3_mini_128k
from phi3_jax import config as config_lib
from phi3_jax import model as phi3


@pytest.mark.parametrize(
    "module, expected",
    [(phi3_mini, 3_821_079_552), (phi3_mini_128k, 3_821_079_552), (phi3_medium, 13_960_238_080)],
)
def test_parameter_counts(module, expected):
    assert phi3.param_count(module.get_config()) == expected


def small_config(**model_overrides):
    config = base.get_config("tiny")
    small = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4)
    config.model.update(
        dict(small, num_kv_heads=2, dtype="float32", eos_token_id=2, pad_token_id=0)
    )
    config.model.update(model_overrides)
    config.train.seq_len = 16
    return config_lib.validate(config)


def test_packed_documents_equal_documents_alone():
    config = small_config()
    params = phi3.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 96, 7), rng.integers(0, 96, 5)
    padding = 4
    tokens = np.concatenate([first, second, np.zeros(padding, int)])[None]
    positions = np.concatenate([np.arange(7), np.arange(5), np.zeros(padding, int)])[None]
    segments = np.concatenate([np.full(7, 1), np.full(5, 2), np.zeros(padding, int)])[None]
    packed = np.asarray(
        phi3.logits(config, params, tokens, positions=positions, segment_ids=segments)
    )
    alone_first = np.asarray(phi3.logits(config, params, first[None]))
    alone_second = np.asarray(phi3.logits(config, params, second[None]))
    np.testing.assert_allclose(packed[0, :7], alone_first[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:12], alone_second[0], rtol=0, atol=1e-5)


def loss_and_grads(config, params, tokens):
    def loss(p):
        logits = phi3.logits(config, p, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize(
    "overrides",
    [dict(scan_layers=False), dict(flat_projections=True)]
    + [dict(remat=policy) for policy in config_lib.REMAT_POLICIES if policy != "none"],
)
def test_scan_unroll_remat_and_flat_projections_agree(overrides):
    reference = small_config()
    params = phi3.init_params(reference, jax.random.key(1))
    tokens = np.random.default_rng(1).integers(0, 96, (2, 10))
    want_logits = np.asarray(phi3.logits(reference, params, tokens))
    want_loss, want_grads = loss_and_grads(reference, params, tokens)

    config = small_config(**overrides)
    assert jax.tree.structure(phi3.abstract_params(config)) == jax.tree.structure(params)
    got_logits = np.asarray(phi3.logits(config, params, tokens))
    got_loss, got_grads = loss_and_grads(config, params, tokens)
    np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_loss, want_loss, rtol=0, atol=1e-6)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def unbatched_contractions(config) -> collections.Counter:
    """The loss gradient's lowered dots without batch axes, counted by the axes they contract
    ("0, 1 x 0, 1": both operands' first two)."""
    tokens = jnp.zeros((2, 8), jnp.int32)

    def loss(p):
        return -jnp.mean(jax.nn.log_softmax(phi3.logits(config, p, tokens))[..., 0])

    text = jax.jit(jax.grad(loss)).lower(phi3.abstract_params(config)).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    return collections.Counter(
        " x ".join(re.search(r"contracting_dims = \[([^\]]*)\] x \[([^\]]*)\]", line).groups())
        for line in dots
        if "batching_dims" not in line
    )


def test_flat_projections_weight_gradients_contract_one_token_axis():
    """The switch's point: a projection's weight gradient contracts its activations' batch and
    length, two axes (which XLA:CPU runs behind a transposed copy), unless the projections see
    the tokens flattened into one."""
    plain = unbatched_contractions(small_config(num_layers=1))
    flat = unbatched_contractions(small_config(num_layers=1, flat_projections=True))
    # q, k, v, o, gate, up, down and lm_head.
    assert plain["0, 1 x 0, 1"] == flat["0 x 0"] == 8
    assert flat["0, 1 x 0, 1"] == 0


def test_unrolled_has_no_layer_loop():
    """scan_layers=False really unrolls: the compiled forward holds no while loop."""
    tokens = jnp.zeros((1, 4), jnp.int32)

    def hlo(config):
        params = phi3.abstract_params(config)
        return jax.jit(lambda p: phi3.logits(config, p, tokens)).lower(params).as_text()

    assert "while" in hlo(small_config(scan_layers=True))
    assert "while" not in hlo(small_config(scan_layers=False))


def test_compute_dtype_separate_from_param_dtype():
    config = small_config(dtype="bfloat16")
    params = phi3.init_params(config, jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    out = phi3.logits(config, params, np.zeros((1, 4), int))
    assert out.dtype == jnp.float32
    fp32 = np.asarray(phi3.logits(small_config(), params, np.zeros((1, 4), int)))
    assert 0 < np.abs(np.asarray(out) - fp32).max() < 0.05  # bf16 compute, close to fp32


def test_cached_decoding_equals_recomputation():
    """Prefill + one token at a time through the kv cache == the full forward pass each step."""
    config = small_config(sliding_window=6)  # the window bites within the 13 tokens
    params = phi3.init_params(config, jax.random.key(2))
    sequence = np.random.default_rng(2).integers(0, 96, (2, 5))
    cache = phi3.init_cache(config, batch=2, length=16)
    logits, cache = phi3.decode(config, params, sequence, cache)
    np.testing.assert_allclose(logits, phi3.logits(config, params, sequence), rtol=0, atol=1e-5)
    for _ in range(8):
        following = np.asarray(jnp.argmax(logits[:, -1], axis=-1))[:, None]
        sequence = np.concatenate([sequence, following], axis=1)
        logits, cache = phi3.decode(config, params, following, cache)
        full = phi3.logits(config, params, sequence)[:, -1]
        np.testing.assert_allclose(logits[:, -1], full, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(cache["index"], [13, 13])
    assert sequence.shape[1] == 13
