"""Phi-3-small's blocksparse attention: the mask against the published rule written out per token,
the fast gathered path against dense attention under that mask (values and gradients), and the
fast path's size at 8K."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi3_jax.model import attention, blocksparse

PHI3_SMALL = blocksparse.BlocksparseSpec(
    block_size=64, num_local_blocks=16, vert_stride=8, homo_head=False
)
# Blocks of 4 tokens: a 50-token row already has local, vertical and dropped blocks.
SMALL = blocksparse.BlocksparseSpec(
    block_size=4, num_local_blocks=2, vert_stride=3, homo_head=False
)


def rule(spec, num_heads, length) -> np.ndarray:
    """[heads, q, k] from PHI3.md §3.6, one token pair at a time."""
    step = 0 if spec.homo_head else max(1, spec.vert_stride // num_heads)
    out = np.zeros((num_heads, length, length), bool)
    for h in range(num_heads):
        for i in range(length):
            for j in range(i + 1):
                qb, kb = i // spec.block_size, j // spec.block_size
                local = qb - kb < spec.num_local_blocks
                vertical = (kb + h * step + 1) % spec.vert_stride == 0
                out[h, i, j] = local or vertical
    return out


@pytest.mark.parametrize(
    "spec, num_heads, length",
    [
        (SMALL, 4, 50),
        (blocksparse.BlocksparseSpec(4, 2, 8, False), 2, 45),
        (blocksparse.BlocksparseSpec(4, 2, 3, True), 3, 37),
        (PHI3_SMALL, 32, 200),
    ],
)
def test_reference_mask_is_the_published_rule(spec, num_heads, length):
    segment_ids = jnp.ones((1, length), jnp.int32)
    mask = np.asarray(blocksparse.reference_mask(spec, num_heads, segment_ids))[0]
    np.testing.assert_array_equal(mask, rule(spec, num_heads, length))


def test_phi3_small_pattern_at_8k():
    """Every head keeps its 16 local blocks and a different vertical residue: heads 0..7 cover
    all 8 residues, and head h keeps key block kb iff (kb + h + 1) % 8 == 0."""
    blocks = blocksparse.block_mask(PHI3_SMALL, 32, 128)
    last = blocks[:, 127]
    assert last[:, 112:].all()
    for h in range(32):
        kept = np.flatnonzero(last[h, :112])
        np.testing.assert_array_equal(kept, np.arange(112)[(np.arange(112) + h + 1) % 8 == 0])
    assert {int(np.flatnonzero(last[h, :8])[0]) for h in range(8)} == set(range(8))


def random_qkv(batch, length, heads, kv_heads, head_dim, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, length, heads, head_dim))
    k = rng.normal(size=(batch, length, kv_heads, head_dim))
    v = rng.normal(size=(batch, length, kv_heads, head_dim))
    return (jnp.asarray(x, jnp.float32) for x in (q, k, v))


def packed_segments(batch, length):
    """Row 0: one document. Row 1: two documents, then padding (segment 0)."""
    segments = np.ones((batch, length), np.int32)
    segments[1, length // 3 :] = 2
    segments[1, length - length // 5 :] = 0
    return jnp.asarray(segments)


CASES = [(SMALL, 4, 2, n) for n in (1, 3, 4, 17, 50)] + [
    (PHI3_SMALL, 8, 2, n) for n in (64, 100, 1100, 1345)
]


@pytest.mark.parametrize("spec, heads, kv_heads, length", CASES)
def test_fast_path_equals_dense_mask_reference(spec, heads, kv_heads, length):
    q, k, v = random_qkv(2, length, heads, kv_heads, 16, seed=length)
    segments = packed_segments(2, length)
    fast = jax.jit(blocksparse.blocksparse_attention, static_argnums=(4, 5))(
        q, k, v, segments, spec, 0.25
    )
    mask = blocksparse.reference_mask(spec, heads, segments)
    reference = attention.einsum_attention(q, k, v, mask, 0.25)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-5)


def test_fast_path_gradients_equal_reference():
    spec, length = SMALL, 50
    q, k, v = random_qkv(2, length, 4, 2, 8, seed=3)
    segments = packed_segments(2, length)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(2, length, 4, 8)), jnp.float32)

    def fast(q, k, v):
        return jnp.sum(weights * blocksparse.blocksparse_attention(q, k, v, segments, spec, 0.3))

    def reference(q, k, v):
        mask = blocksparse.reference_mask(spec, 4, segments)
        return jnp.sum(weights * attention.einsum_attention(q, k, v, mask, 0.3))

    got = jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)


def test_fast_path_never_builds_seq_by_seq_at_8k():
    """Traced at 8K with Phi-3-small's 32/8 heads: each query scores its 16 local blocks and its
    head's 14 stripes (1920 of 8192 keys), as two arrays; the largest intermediate is the local
    part, an eighth of one dense [heads, seq, seq] score tensor."""
    length, heads, kv_heads, head_dim = 8192, 32, 8, 128
    q = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, kv_heads, head_dim), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, length), jnp.int32)
    jaxpr = jax.make_jaxpr(
        lambda q, k, v, s: blocksparse.blocksparse_attention(q, k, v, s, PHI3_SMALL, 1 / 128)
    )(q, kv, kv, segments)
    shapes = [
        var.aval.shape for eqn in jaxpr.eqns for var in eqn.outvars if hasattr(var.aval, "shape")
    ]
    stripes, _ = blocksparse.stripe_table(PHI3_SMALL, heads, 128)
    assert stripes.shape == (heads, 14)  # blocks up to 111 on each head's residue mod 8
    assert (1, kv_heads, 4, 128, 64, 16, 64) in shapes  # local scores
    assert (1, kv_heads, 4, 128, 64, 14, 64) in shapes  # stripe scores
    assert max(math.prod(shape) for shape in shapes) == heads * length * 16 * 64
