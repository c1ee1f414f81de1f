"""Checksums of a checkpoint's arrays, computed on the devices, and their check at restore.

orbax 0.12.8 writes zarr chunks without a checksum of their own (its zarr3 codec chain has a
crc32c on the shard index only, and no option to add one), so the checksums are ours: per array
two 32-bit sums of a hash of each element's bits and position, computed on the devices. Integer
sums are exact in any order, so they are the same on any mesh and any process count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class DamagedError(RuntimeError):
    """A checkpoint's bytes are not those that were saved; the message names the array."""


def _element_bits(x: jax.Array) -> jax.Array:
    """Each element's bits as uint32 (keys as their key data, narrow dtypes zero-extended)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's finalizer: a bijection of uint32 in which every input bit moves every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    bits = _element_bits(x)
    # Row-major position from per-dimension iotas (a reshape of a sharded array would move data).
    position, stride = jnp.zeros(bits.shape, jnp.uint32), 1
    for dim in reversed(range(bits.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * jnp.uint32(
            stride % 2**32
        )
        stride *= bits.shape[dim]
    # Two lanes with different seeds: a change goes unnoticed with probability about 2^-64.
    lanes = [
        jnp.sum(_fmix32(bits ^ _fmix32(position + jnp.uint32(seed))), dtype=jnp.uint32)
        for seed in (0x9E3779B9, 0x7F4A7C15)
    ]
    return jnp.stack(lanes)


def _leaf_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


_checksums = jax.jit(
    lambda tree: (jax.tree.map(_leaf_checksum, tree), jax.tree.map(_leaf_finite, tree))
)


def array_checksums(tree) -> tuple[dict[str, list[int]], list[str]]:
    """Per array of `tree` (by its key path), two 32-bit checksums of its values (the same for
    equal values on any sharding, different but with probability ~2^-64 for any change), and the
    paths of the arrays holding a NaN or inf; one pass over the arrays on their devices."""
    sums, finite = jax.device_get(_checksums(tree))
    checksums = {
        jax.tree_util.keystr(path): [int(v) for v in np.asarray(leaf)]
        for path, leaf in jax.tree_util.tree_leaves_with_path(sums)
    }
    non_finite = [
        jax.tree_util.keystr(path)
        for path, ok in jax.tree_util.tree_leaves_with_path(finite)
        if not ok
    ]
    return checksums, non_finite


def verify_checksums(tree, saved: dict[str, list[int]], where: str) -> None:
    """Raise DamagedError naming the first array of `tree` whose checksum is not the saved one."""
    for path, got in array_checksums(tree)[0].items():
        if saved.get(path) != got:
            raise DamagedError(
                f"{where}: array {path} does not match its saved checksum "
                f"({saved.get(path)} saved, {got} read)"
            )
