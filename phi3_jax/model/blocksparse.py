"""Phi-3-small's blocksparse attention: the mask rule, a dense-mask reference, and the fast path.

The rule (HF `triton_flash_blocksparse_attn._get_sparse_attn_mask`, PHI3.md §3.6): the row is cut
into blocks of `block_size` tokens by index; query head h in block qb sees key block kb iff

    kb <= qb  and  (qb - kb < num_local_blocks  or  (kb + h * step + 1) % vert_stride == 0)

with step = max(1, vert_stride // num_heads) (h * step replaced by 0 with a homogeneous pattern),
and inside the kept blocks attention is causal per token. Segment ids are ANDed in as in the dense
layers (segment 0 is padding and only sees padding).

`reference_mask` expands the rule to a [batch, heads, seq, seq] mask for `dense_attention`.
`blocksparse_attention` never builds anything seq x seq: it gathers, for each query block, only its
kept key blocks (a static table per head), so FLOPs and memory grow with the kept blocks.
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


def block_mask(spec: BlocksparseSpec, num_heads: int, num_blocks: int) -> np.ndarray:
    """Boolean [heads, query block, key block]: which key blocks each query block keeps."""
    head_step = 0 if spec.homo_head else max(1, spec.vert_stride // num_heads)
    heads = np.arange(num_heads)[:, None, None]
    query = np.arange(num_blocks)[None, :, None]
    key = np.arange(num_blocks)[None, None, :]
    vertical = (key + heads * head_step + 1) % spec.vert_stride == 0
    return (query >= key) & ((query - key < spec.num_local_blocks) | vertical)


def reference_mask(spec: BlocksparseSpec, num_heads: int, segment_ids: Array) -> Array:
    """Boolean [batch, heads, seq, seq]: the rule at token level, causal, within one segment."""
    length = segment_ids.shape[-1]
    blocks = block_mask(spec, num_heads, math.ceil(length / spec.block_size))
    token_block = np.arange(length) // spec.block_size
    kept = blocks[:, token_block][:, :, token_block]
    causal = np.tril(np.ones((length, length), bool))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jnp.asarray(kept & causal)[None] & same_segment[:, None]


def dense_attention(q: Array, k: Array, v: Array, mask: Array, scale: float) -> Array:
    """Softmax attention over all keys: q [b, s, heads, d], k/v [b, s, kv_heads, d], mask boolean
    broadcastable to [b, heads, s, s]. Query head h uses kv head h // (heads // kv_heads)."""
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    mask = jnp.broadcast_to(mask, (batch, num_heads, length, length))
    mask = mask.reshape(batch, num_kv_heads, group, length, length)
    q = q.reshape(batch, length, num_kv_heads, group, head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
    return out.reshape(batch, length, num_heads, head_dim)


def kept_block_table(
    spec: BlocksparseSpec, num_heads: int, num_blocks: int
) -> tuple[np.ndarray, np.ndarray]:
    """[heads, query block, slots] indices of the kept key blocks (ascending), and which slots are
    real: every query block gets as many slots as the busiest one; spare slots point at block 0."""
    blocks = block_mask(spec, num_heads, num_blocks)
    slots = int(blocks.sum(-1).max())
    order = np.argsort(~blocks, axis=-1, kind="stable")[..., :slots]
    real = np.take_along_axis(blocks, order, axis=-1)
    return np.where(real, order, 0).astype(np.int32), real


def _pad_length(x: Array, length: int, value=0) -> Array:
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


def blocksparse_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, spec: BlocksparseSpec, scale: float
) -> Array:
    """`dense_attention` under `reference_mask`, computing only the kept key blocks.

    Shapes as in `dense_attention`, segment_ids [b, s]. The row is padded to whole blocks (pad
    tokens get segment -1, so no real token sees them) and trimmed again.
    """
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    size = spec.block_size
    num_blocks = math.ceil(length / size)
    padded = num_blocks * size
    q, k, v = (_pad_length(x, padded) for x in (q, k, v))
    segment_ids = _pad_length(segment_ids, padded, -1)

    table, real = kept_block_table(spec, num_heads, num_blocks)
    slots = table.shape[-1]
    # Query head h = kv * group + g reads kv head `kv`: group the table the same way.
    table = table.reshape(num_kv_heads, group, num_blocks, slots)
    real = real.reshape(num_kv_heads, group, num_blocks, slots)

    q = q.reshape(batch, num_blocks, size, num_kv_heads, group, head_dim)
    k = k.reshape(batch, num_blocks, size, num_kv_heads, head_dim)
    v = v.reshape(batch, num_blocks, size, num_kv_heads, head_dim)

    # The gather keeps kv heads as a batch axis: [b, kv, g, query block, slot, size, d].
    def gather(blocks: Array) -> Array:
        return jax.vmap(lambda x, idx: x[:, idx], in_axes=(3, 0), out_axes=1)(blocks, table)

    k_kept, v_kept = gather(k), gather(v)
    scores = jnp.einsum("bnqkgd,bkgnsjd->bkgnqsj", q, k_kept, preferred_element_type=jnp.float32)
    # Visibility: a real slot, causal (only the diagonal block can fail it), same segment.
    key_pos = table[..., None] * size + np.arange(size)  # [kv, g, n, s, j]
    query_pos = np.arange(padded).reshape(num_blocks, size)  # [n, q]
    visible = real[..., None, :, None] & (
        key_pos[:, :, :, None] <= query_pos[None, None, :, :, None, None]
    )
    segments = segment_ids.reshape(batch, num_blocks, size)
    key_segments = segments[:, table]  # [b, kv, g, n, s, j]
    same_segment = segments[:, None, None, :, :, None, None] == key_segments[:, :, :, :, None]
    scores = jnp.where(visible[None] & same_segment, scores * scale, jnp.finfo(jnp.float32).min)
    # One softmax over all kept keys of a query: flatten (slot, position in block).
    flat = scores.reshape(*scores.shape[:-2], slots * size)
    probs = jax.nn.softmax(flat, axis=-1).reshape(scores.shape).astype(v.dtype)
    out = jnp.einsum("bkgnqsj,bkgnsjd->bnqkgd", probs, v_kept)
    return out.reshape(batch, padded, num_heads, head_dim)[:, :length]
