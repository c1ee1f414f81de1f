"""Every attention kernel equals the plain einsum path (outputs and q/k/v gradients, fp32, 1e-5)
on packed rows with padding, GQA, and with and without a sliding window; the backend selection
falls back with a log line where a kernel cannot run."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi3_jax.model import attention

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 128, 4, 2, 16
SCALE = HEAD_DIM**-0.5
TOL = 1e-5


def inputs(seed: int = 0):
    """q, k, v and segment ids: row 0 two documents, row 1 one document then padding."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, LENGTH, HEADS, HEAD_DIM))
    k, v = rng.normal(size=(2, BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    segment_ids = np.ones((BATCH, LENGTH), np.int32)
    segment_ids[0, 50:] = 2
    segment_ids[1, 100:] = 0
    arrays = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    return (*arrays, jnp.asarray(segment_ids))


def kernel(impl: str, window: int):
    """The kernel as a function of (q, k, v, segment_ids)."""
    if impl == "einsum":
        return lambda q, k, v, s: attention.einsum_attention(
            q, k, v, attention.attention_mask(s, window), SCALE
        )
    if impl == "xla":
        return lambda q, k, v, s: attention.dot_product_attention(q, k, v, s, SCALE, window, "xla")
    if impl == "splash":  # The TPU kernel, interpreted on the CPU.
        return lambda q, k, v, s: attention.splash_attention(
            q, k, v, s, SCALE, window, interpret=True
        )
    return lambda q, k, v, s: attention.chunked_attention(q, k, v, s, SCALE, window, chunk=32)


def output_and_grads(impl: str, window: int):
    """The kernel's output and the gradients of a random projection of it w.r.t. q, k, v."""
    q, k, v, segment_ids = inputs()
    fn = kernel(impl, window)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def objective(q, k, v):
        return jnp.sum(fn(q, k, v, segment_ids) * weights)

    out = jax.jit(fn)(q, k, v, segment_ids)
    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(q, k, v)
    return out, grads


@pytest.mark.parametrize("window", [0, 37])
@pytest.mark.parametrize("impl", ["xla", "chunked", "splash"])
def test_kernel_equals_plain_attention(impl, window):
    if impl == "splash" and window == 0:
        pytest.skip("splash is interpreted (slow on CPU): the windowed case covers it")
    out, grads = output_and_grads(impl, window)
    ref_out, ref_grads = output_and_grads("einsum", window)
    # Measured: output <= 5e-7, gradients <= 4e-6.
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=TOL)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"d{name}")


def test_chunked_attention_never_forms_the_score_matrix():
    # Compiled temp memory at 2048 tokens: the plain path holds [heads, q, k] fp32 scores, the
    # chunked one [heads, q, chunk] blocks.
    length, chunk = 2048, 128
    q = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, KV_HEADS, HEAD_DIM), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def temp_bytes(fn) -> int:
        lowered = jax.jit(fn).lower(q, kv, kv, segments)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    scores_bytes = HEADS * length * length * 4
    chunked = temp_bytes(
        lambda q, k, v, s: attention.chunked_attention(q, k, v, s, SCALE, 0, chunk=chunk)
    )
    plain = temp_bytes(kernel("einsum", 0))
    assert plain >= scores_bytes
    assert chunked < scores_bytes / 4


SELECTIONS = [
    # requested, platform, dtype, splash importable -> chosen, falls back
    ("einsum", "cpu", "float32", True, "einsum", False),
    ("chunked", "gpu", "bfloat16", True, "chunked", False),
    ("xla", "tpu", "bfloat16", True, "xla", False),
    ("cudnn", "gpu", "bfloat16", True, "cudnn", False),
    ("cudnn", "gpu", "float16", True, "cudnn", False),
    ("cudnn", "gpu", "float32", True, "xla", True),
    ("cudnn", "cpu", "bfloat16", True, "xla", True),
    ("cudnn", "tpu", "bfloat16", True, "xla", True),
    ("splash", "tpu", "bfloat16", True, "splash", False),
    ("splash", "tpu", "bfloat16", False, "xla", True),
    ("splash", "gpu", "bfloat16", True, "cudnn", True),
    ("splash", "gpu", "float32", True, "xla", True),
    ("splash", "cpu", "float32", True, "xla", True),
]


@pytest.mark.parametrize("requested,platform,dtype,available,chosen,falls_back", SELECTIONS)
def test_select(requested, platform, dtype, available, chosen, falls_back):
    got, why = attention.select(requested, platform, dtype, available)
    assert got == chosen
    assert bool(why) == falls_back


@pytest.mark.parametrize("requested", ["cudnn", "splash"])
def test_resolve_on_cpu_falls_back_to_xla_with_a_log_line(requested, caplog):
    attention.resolve.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        assert attention.resolve(requested, "bfloat16") == "xla"
    assert f"model.attention={requested}" in caplog.text
    assert "using xla instead" in caplog.text
