"""Phi-3-small's blocksparse attention: the mask rule, a dense-mask reference, and the fast path.

The rule (HF `triton_flash_blocksparse_attn._get_sparse_attn_mask`, PHI3.md §3.6): the row is cut
into blocks of `block_size` tokens by index; query head h in block qb sees key block kb iff

    kb <= qb  and  (qb - kb < num_local_blocks  or  (kb + h * step + 1) % vert_stride == 0)

with step = max(1, vert_stride // num_heads) (h * step replaced by 0 with a homogeneous pattern),
and inside the kept blocks attention is causal per token. Segment ids are ANDed in as in the dense
layers (segment 0 is padding and only sees padding).

`reference_mask` expands the rule to a [batch, heads, seq, seq] mask for the dense grouped kernel
(`attention.einsum_attention`, with a per-head mask), and `decode_mask` to the new tokens of a
decoding step over the key/value cache.
`blocksparse_attention` never builds anything seq x seq: each query block gathers its local
window of key blocks (per kv head) and each head its vertical stripes (static tables), so FLOPs and
memory grow with the kept blocks, not with seq^2. Packed rows keep the row's block grid: blocks
are counted from the start of the row, not of each document.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BlocksparseSpec:
    """The blocksparse pattern of one attention layer."""

    block_size: int
    num_local_blocks: int
    vert_stride: int
    homo_head: bool

    @classmethod
    def from_model(cls, model: ml_collections.ConfigDict) -> BlocksparseSpec:
        return cls(
            block_size=model.blocksparse_block_size,
            num_local_blocks=model.blocksparse_num_local_blocks,
            vert_stride=model.blocksparse_vert_stride,
            homo_head=model.blocksparse_homo_head_pattern,
        )


def keeps(spec: BlocksparseSpec, num_heads: int, head, query_block, key_block):
    """The rule: whether query head `head` in block `query_block` keeps key block `key_block`,
    elementwise over integer arrays that broadcast (NumPy or JAX)."""
    head_step = 0 if spec.homo_head else max(1, spec.vert_stride // num_heads)
    vertical = (key_block + head * head_step + 1) % spec.vert_stride == 0
    return (query_block >= key_block) & (
        (query_block - key_block < spec.num_local_blocks) | vertical
    )


def block_mask(spec: BlocksparseSpec, num_heads: int, num_blocks: int) -> np.ndarray:
    """Boolean [heads, query block, key block]: which key blocks each query block keeps."""
    heads = np.arange(num_heads)[:, None, None]
    query = np.arange(num_blocks)[None, :, None]
    key = np.arange(num_blocks)[None, None, :]
    return keeps(spec, num_heads, heads, query, key)


def decode_mask(
    spec: BlocksparseSpec, num_heads: int, query_positions: Array, key_positions: Array
) -> Array:
    """Boolean [batch, heads, n, cache]: the rule's blocks for new tokens at `query_positions`
    [batch, n] over cache slots holding positions `key_positions` [batch, cache] (blocks count
    from each sequence's position 0). Causality and padding are the dense decode mask's."""
    query = query_positions[:, None, :, None] // spec.block_size
    key = key_positions[:, None, None, :] // spec.block_size
    heads = jnp.arange(num_heads)[None, :, None, None]
    return keeps(spec, num_heads, heads, query, key)


def reference_mask(spec: BlocksparseSpec, num_heads: int, segment_ids: Array) -> Array:
    """Boolean [batch, heads, seq, seq]: the rule at token level, causal, within one segment."""
    length = segment_ids.shape[-1]
    blocks = block_mask(spec, num_heads, math.ceil(length / spec.block_size))
    token_block = np.arange(length) // spec.block_size
    kept = blocks[:, token_block][:, :, token_block]
    causal = np.tril(np.ones((length, length), bool))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jnp.asarray(kept & causal)[None] & same_segment[:, None]


def stripe_table(
    spec: BlocksparseSpec, num_heads: int, num_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """[heads, stripes] key blocks each head keeps beyond the local window of some query block
    (its vertical stripes), ascending, and which entries are real (spares point at block 0).

    They are the kept blocks of the last query block older than its local window: a query block
    qb keeps stripe kb iff kb <= qb - num_local_blocks.
    """
    old = block_mask(spec, num_heads, num_blocks)[
        :, -1, : max(0, num_blocks - spec.num_local_blocks)
    ]
    stripes = int(old.sum(-1).max()) if old.size else 0
    order = np.argsort(~old, axis=-1, kind="stable")[:, :stripes]
    real = np.take_along_axis(old, order, axis=-1)
    return np.where(real, order, 0).astype(np.int32), real


def _pad_length(x: Array, length: int, value=0) -> Array:
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


def blocksparse_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, spec: BlocksparseSpec, scale: float
) -> Array:
    """`attention.einsum_attention` under `reference_mask`, computing only blocks the rule can
    keep.

    q [b, s, heads, d], k/v [b, s, kv_heads, d], segment_ids [b, s]. Each query block scores
      * its local window, the num_local_blocks key blocks ending at its own (gathered once per kv
        head, shared by the heads of its group), causal inside its own block, and
      * its head's vertical stripes (gathered once per head, shared by all query blocks), of which
        those older than the local window count.
    One softmax spans both. The row is padded to whole blocks (pad tokens get segment -1, so no
    real token sees them) and trimmed again. Scores take [heads, seq, (local + stripes) * block]:
    at 8K with Phi-3-small's pattern, (16 + 14) * 64 = 1920 keys per query instead of 8192.
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    size, window = spec.block_size, spec.num_local_blocks
    num_blocks = math.ceil(length / size)
    padded = num_blocks * size
    q, k, v = (_pad_length(x, padded) for x in (q, k, v))
    segments = _pad_length(segment_ids, padded, -1).reshape(batch, num_blocks, size)
    q = q.reshape(batch, num_blocks, size, num_kv_heads, group, head_dim)
    k = k.reshape(batch, num_blocks, size, num_kv_heads, head_dim)
    v = v.reshape(batch, num_blocks, size, num_kv_heads, head_dim)
    query_pos = np.arange(padded).reshape(num_blocks, size)
    query_block = np.arange(num_blocks)
    query_segments = segments[:, None, None, :, :, None, None]  # [b, 1, 1, n, q, 1, 1]
    neg = jnp.finfo(jnp.float32).min

    # Local window: key block n - window + 1 + w for w < window; [n, w].
    local = query_block[:, None] - window + 1 + np.arange(window)
    local_real = local >= 0
    local = np.maximum(local, 0)
    k_local, v_local = k[:, local], v[:, local]  # [b, n, w, j, kv, d]
    local_scores = jnp.einsum(
        "bnqkgd,bnwjkd->bkgnqwj", q, k_local, preferred_element_type=jnp.float32
    )
    local_pos = local[..., None] * size + np.arange(size)  # [n, w, j]
    local_visible = local_real[:, None, :, None] & (
        local_pos[:, None] <= query_pos[:, :, None, None]
    )  # [n, q, w, j]
    local_same = query_segments == segments[:, local][:, None, None, :, None]
    # (masked scores, values, einsum of probabilities and values) of each part.
    parts = [
        (
            jnp.where(local_visible & local_same, local_scores * scale, neg),
            v_local,
            "bkgnqwj,bnwjkd->bnqkgd",
        )
    ]

    stripes, stripe_real = stripe_table(spec, num_heads, num_blocks)
    num_stripes = stripes.shape[-1]
    if num_stripes:
        # Query head h = kv * group + g reads kv head `kv`: group the table the same way.
        stripes = stripes.reshape(num_kv_heads, group, num_stripes)
        stripe_real = stripe_real.reshape(num_kv_heads, group, num_stripes)

        def gather(blocks: Array) -> Array:  # -> [b, kv, g, stripe, j, d]
            return jax.vmap(lambda x, idx: x[:, idx], in_axes=(3, 0), out_axes=1)(blocks, stripes)

        k_stripes, v_stripes = gather(k), gather(v)
        stripe_scores = jnp.einsum(
            "bnqkgd,bkgsjd->bkgnqsj", q, k_stripes, preferred_element_type=jnp.float32
        )
        # A stripe counts for query block n only when older than n's local window.
        stripe_visible = stripe_real[:, :, None] & (
            stripes[:, :, None] <= query_block[:, None] - window
        )  # [kv, g, n, s]
        stripe_same = query_segments == segments[:, stripes][:, :, :, None, None]
        stripe_mask = stripe_visible[None, :, :, :, None, :, None] & stripe_same
        parts.append(
            (
                jnp.where(stripe_mask, stripe_scores * scale, neg),
                v_stripes,
                "bkgnqsj,bkgsjd->bnqkgd",
            )
        )

    # One softmax over both parts, without concatenating them: a shared max, then the weighted
    # values of each part summed and divided by the total weight.
    top = jnp.max(
        jnp.stack([jnp.max(scores, axis=(-2, -1)) for scores, _, _ in parts]), axis=0
    )  # [b, kv, g, n, q]; finite, since every query sees at least itself
    weights = [jnp.exp(scores - top[..., None, None]) for scores, _, _ in parts]
    total = sum(jnp.sum(w, axis=(-2, -1)) for w in weights)
    out = sum(
        jnp.einsum(spec, w.astype(v.dtype), values)
        for w, (_, values, spec) in zip(weights, parts, strict=True)
    )
    out = out / jnp.moveaxis(total, (1, 2), (3, 4))[..., None].astype(v.dtype)
    return out.reshape(batch, padded, num_heads, head_dim)[:, :length]
