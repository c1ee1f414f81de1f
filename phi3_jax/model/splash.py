"""Splash attention (the Pallas TPU kernel) with segment ids, on each device's shard of a mesh.

`model.attention` owns the kernel choice and the masks and calls it for `model.attention=splash`;
this module owns the kernel's tiling and its placement: GSPMD cannot partition a Mosaic call, so
on a multi-device mesh every device runs the kernel on its own rows and heads inside `shard_map`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Logical axes of q and of k, v as every attention kernel receives them: rows over the batch
# axes, positions over the sequence axis, heads over the tensor axis.
Q_AXES = ("batch", "length", "heads", None)
KV_AXES = ("batch", "length", "kv_heads", None)


@functools.cache
def available() -> bool:
    """Whether this jax ships the Pallas splash kernels."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention  # noqa: F401
    except ImportError:
        return False
    return True


# Splash's tile edge: the largest of these that divides the row length (validation requires
# one). 512 is MaxText's default block; 128 is the TPU's lane width, the smallest tile.
BLOCKS = (512, 256, 128)


def splash_block(length: int) -> int:
    """The splash kernel's q and kv block size for rows of `length` tokens."""
    return next(block for block in BLOCKS if length % block == 0)


def splash_attention(
    q: Array,
    k: Array,
    v: Array,
    segment_ids: Array,
    scale: float,
    window: int,
    interpret: bool = False,
) -> Array:
    """Pallas splash attention on one device's rows (TPU; `interpret=True` runs it anywhere,
    slowly, for tests). The kernel takes grouped kv heads itself; the scale is folded into q."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernels,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    heads, length = q.shape[2], q.shape[1]
    shape = (length, length)
    head_mask = masks.LocalMask(shape, (window - 1, 0), 0) if window else masks.CausalMask(shape)
    block = splash_block(length)
    kernel = kernels.make_splash_mha_single_device(
        masks.MultiHeadMask([head_mask] * heads),
        block_sizes=kernels.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        ),
        interpret=interpret,
    )

    def one_row(q, k, v, segments):  # q [heads, l, d]; k, v [kv_heads, l, d]
        return kernel(q, k, v, segment_ids=kernels.SegmentIds(q=segments, kv=segments))

    q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)
    out = jax.vmap(one_row)(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids)
    return out.transpose(0, 2, 1, 3)


def sharded_splash_attention(
    q: Array,
    k: Array,
    v: Array,
    segment_ids: Array,
    scale: float,
    window: int,
    interpret: bool = False,
) -> Array:
    """`splash_attention` on every device's own rows and heads of the active mesh (`shard_map`
    with the logical rules' placement of q, k, v and the segment ids); one device, or no mesh,
    runs it directly.

    A Pallas kernel is opaque to GSPMD, which would gather its operands whole onto every device;
    inside `shard_map` each device runs it on its shard. Rows split over the batch axes and heads
    over the tensor axis need no communication (a query head's kv head, h // group, stays on its
    device when kv heads split as heads do); a split sequence would (ring attention), so splash
    refuses mesh.sequence > 1 at validation.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return splash_attention(q, k, v, segment_ids, scale, window, interpret)
    q_spec = nn.logical_to_mesh_axes(Q_AXES)
    kv_spec = nn.logical_to_mesh_axes(KV_AXES)
    segment_spec = nn.logical_to_mesh_axes(KV_AXES[:2])
    kernel = functools.partial(splash_attention, scale=scale, window=window, interpret=interpret)
    # check_vma=False: Pallas calls carry no varying-manual-axes annotations.
    return jax.shard_map(
        kernel,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, segment_spec),
        out_specs=q_spec,
        check_vma=False,
    )(q, k, v, segment_ids)
