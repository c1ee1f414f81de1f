"""Attention: its masks, the choice of kernel behind `model.attention`, and the kernels.

A block asks this module for its mask input (`training_mask`, `decoding_mask`) and, with that,
for its output (`attend`); which kernel runs, and so which form the mask takes, is decided here
only. Every kernel takes q [batch, length, heads, head_dim] and k, v [batch, length, kv_heads, head_dim]
(query head h reads kv head h // (heads // kv_heads), HF's repeat_kv) and returns
[batch, length, heads, head_dim]. Keys are visible causally, inside the sliding window if any, and
within the query's segment (0 = padding):

  einsum   the plain path: grouped einsums over the full [q, k] score matrix and a precomputed
           mask, one for all heads or one per head (Phi-3-small's blocksparse layers decode
           with it; see `blocksparse` for their training kernel)
  xla      `jax.nn.dot_product_attention`, XLA implementation
  cudnn    `jax.nn.dot_product_attention`, cuDNN's fused kernel (GPU, bf16/fp16)
  splash   the Pallas splash attention kernel with segment ids (TPU), in `shard_map` on a
           mesh (`model.splash`)
  chunked  online softmax over key chunks with a flash-style backward: never forms the [q, k]
           score matrix, only [q, chunk] blocks, on any backend

A kernel the target cannot run is replaced by the best one it can (`select`), with a log line;
the target is the active mesh's platform, so an AOT compile for a TPU slice gets the TPU kernels.
Decoding always runs einsum over the cache under `decoding_mask`.
"""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phi3_jax import config as config_lib
from phi3_jax.model import splash

Array = jax.Array

_LOG = logging.getLogger(__name__)
# Scores of invisible keys; finite so a row whose first chunk is all masked yields no NaN.
_MASKED = jnp.finfo(jnp.float32).min
# Logical names of k/v gathered whole along the sequence (sequence parallelism keeps q sharded).
_GATHERED_KV = ("batch", None, "kv_heads", None)


def causal_mask(query_index: Array, key_index: Array, sliding_window: int) -> Array:
    """Boolean [q, k]: key j is visible to query i iff i - window < j <= i (HF's semantics)."""
    query, key = query_index[:, None], key_index[None, :]
    visible = key <= query
    if sliding_window:
        visible &= query - key < sliding_window
    return visible


def attention_mask(segment_ids: Array, sliding_window: int) -> Array:
    """Boolean [batch, q, k]: causal, within one segment, and inside the sliding window if any.

    Segment 0 marks padding; padded positions only see other padding, so no real token attends to
    them.
    """
    index = jnp.arange(segment_ids.shape[-1])
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal_mask(index, index, sliding_window)[None] & same_segment


def decode_mask(
    index: Array, start: Array, length: int, cache_length: int, sliding_window: int
) -> Array:
    """Boolean [batch, length, cache_length] for `length` new tokens written at cache slot
    `index` [batch] of rows whose sequences begin at slot `start` [batch] (left padding before)."""
    query = index[:, None] + jnp.arange(length)
    key = jnp.arange(cache_length)
    visible = jax.vmap(causal_mask, in_axes=(0, None, None))(query, key, sliding_window)
    return visible & (key >= start[:, None, None])


def select(requested: str, platform: str, dtype: str, splash_available: bool) -> tuple[str, str]:
    """The kernel to run for `requested` on `platform` (cpu|gpu|tpu) at compute `dtype`, and why
    it differs from the request ("" when it does not)."""
    fallback = "cudnn" if platform == "gpu" and dtype in ("bfloat16", "float16") else "xla"
    if requested == "splash" and platform != "tpu":
        return fallback, f"splash attention runs on TPU only, not {platform}"
    if requested == "splash" and not splash_available:
        return "xla", "jax.experimental.pallas.ops.tpu.splash_attention is not importable"
    if requested == "cudnn" and platform != "gpu":
        return "xla", f"cuDNN attention runs on GPU only, not {platform}"
    if requested == "cudnn" and dtype not in ("bfloat16", "float16"):
        return "xla", f"cuDNN attention needs bfloat16 or float16, not {dtype}"
    return requested, ""


def target_platform() -> str:
    """The platform being compiled for: the active mesh's devices' (a TPU slice compiled ahead
    of time on a CPU host is "tpu"), else the default backend's."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


@functools.cache
def resolve(requested: str, dtype: str, platform: str) -> str:
    """`select` for `platform`; logs a fallback once per (request, dtype, platform)."""
    chosen, why = select(requested, platform, dtype, splash.available())
    if why:
        _LOG.warning("model.attention=%s: %s; using %s instead", requested, why, chosen)
    return chosen


def uses_segment_ids(model: ml_collections.ConfigDict) -> bool:
    """Whether the training blocks receive segment ids (fast paths) rather than the full mask."""
    return model.attention != "einsum"


def training_mask(model: ml_collections.ConfigDict, segment_ids: Array) -> Array:
    """The mask input of a training (or scoring) call for `attend`: the segment ids [batch,
    length] for the fast kernels, which build their masks blockwise, else the boolean
    [batch, q, k] mask."""
    if uses_segment_ids(model):
        return segment_ids
    return attention_mask(segment_ids, model.sliding_window)


def decoding_mask(
    model: ml_collections.ConfigDict, index: Array, start: Array, length: int, cache_length: int
) -> Array:
    """The mask input of a decoding call (`decode_mask` under the model's sliding window)."""
    return decode_mask(index, start, length, cache_length, model.sliding_window)


def _group(q: Array, kv_heads: int) -> Array:
    """[b, l, heads, d] -> [b, l, kv_heads, group, d]."""
    b, length, heads, d = q.shape
    return q.reshape(b, length, kv_heads, heads // kv_heads, d)


def einsum_attention(
    q: Array, k: Array, v: Array, mask: Array, scale: float, score_dtype=jnp.float32
) -> Array:
    """The plain path over all keys: k, v [b, t, kv_heads, d] (t = the length, or a decoding
    cache's); `mask` boolean [b, q, t] for every head, or per head broadcastable to
    [b, heads, q, t]. The scores and their softmax are `score_dtype` (fp32 as HF; bf16 halves
    the [b, heads, q, t] matrices a training step keeps, as MaxText's default does)."""
    b, length, heads, d = q.shape
    kv_heads = k.shape[2]
    if mask.ndim == 3:
        mask = mask[:, None, None]
    else:
        mask = jnp.broadcast_to(mask, (b, heads, length, k.shape[1]))
        mask = mask.reshape(b, kv_heads, heads // kv_heads, length, k.shape[1])
    scores = jnp.einsum(
        "bqkgd,bskd->bkgqs", _group(q, kv_heads), k, preferred_element_type=score_dtype
    )
    scores = jnp.where(mask, scores * jnp.asarray(scale, score_dtype), jnp.finfo(score_dtype).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, length, heads, d)


def dot_product_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, scale: float, window: int, impl: str
) -> Array:
    """`jax.nn.dot_product_attention` (impl "xla" or "cudnn"): causal and window as flags,
    segments as a mask."""
    same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=same_segment,
        scale=scale,
        is_causal=True,
        local_window_size=(window - 1, 0) if window else None,
        implementation=impl,
    )


def strided_chunks(x: Array, chunks: int) -> Array:
    """[b, l, ...] -> [chunks, b, l // chunks, ...]; chunk j holds positions j, j + chunks, ...

    Strided so that a sequence-sharded x stays sharded: each device's contiguous block of
    positions is its contiguous share of every chunk, and a scan over chunks moves no data.
    """
    return jnp.moveaxis(x.reshape(x.shape[0], -1, chunks, *x.shape[2:]), 2, 0)


def _unchunk(x: Array) -> Array:
    """Inverse of `strided_chunks`."""
    x = jnp.moveaxis(x, 0, 2)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _block_mask(segment_ids: Array, kv_segments: Array, kv_index: Array, window: int) -> Array:
    """Boolean [b, 1, 1, q, chunk]: which keys of one chunk each query sees."""
    q_index = jnp.arange(segment_ids.shape[1])
    visible = causal_mask(q_index, kv_index, window)[None]
    visible &= segment_ids[:, :, None] == kv_segments[:, None, :]
    return visible[:, None, None]


def _gather_kv(*arrays: Array) -> list[Array]:
    """A key chunk (k, v, segment ids) whole on every device; a no-op without sequence sharding."""
    return [nn.with_logical_constraint(x, _GATHERED_KV[: x.ndim]) for x in arrays]


def _key_chunks(k: Array, v: Array, segment_ids: Array, chunks: int) -> tuple[Array, ...]:
    """Scan inputs over key chunks: k, v, segment ids and the positions of each chunk."""
    length = k.shape[1]
    positions = jnp.arange(length).reshape(-1, chunks).T
    return (*(strided_chunks(x, chunks) for x in (k, v, segment_ids)), positions)


def _chunk_scores(q, k_chunk, segment_ids, kv_segments, kv_index, scale, window):
    """Scaled scores [b, kv, g, q, chunk] and visibility of one key chunk."""
    scores = jnp.einsum("bqkgd,bckd->bkgqc", q, k_chunk, preferred_element_type=jnp.float32)
    return scores * scale, _block_mask(segment_ids, kv_segments, kv_index, window)


def _chunked_forward(q, k, v, segment_ids, scale, window, chunk):
    """Output [b, q, kv, g, d] and log-sum-exp [b, kv, g, q] by online softmax over key chunks."""
    b, length, kv_heads, group, d = q.shape

    def step(carry, x):
        running_max, total, acc = carry
        k_chunk, v_chunk, kv_seg = _gather_kv(*x[:3])
        kv_index = x[3]
        scores, visible = _chunk_scores(q, k_chunk, segment_ids, kv_seg, kv_index, scale, window)
        new_max = jnp.maximum(running_max, jnp.max(jnp.where(visible, scores, _MASKED), -1))
        probs = jnp.where(visible, jnp.exp(scores - new_max[..., None]), 0.0)
        correction = jnp.exp(running_max - new_max)
        total = total * correction + jnp.sum(probs, -1)
        update = jnp.einsum(
            "bkgqc,bckd->bkgqd", probs.astype(v.dtype), v_chunk, preferred_element_type=jnp.float32
        )
        return (new_max, total, acc * correction[..., None] + update), None

    stats = jnp.full((b, kv_heads, group, length), _MASKED)
    init = (stats, jnp.zeros_like(stats), jnp.zeros((b, kv_heads, group, length, d), jnp.float32))
    xs = _key_chunks(k, v, segment_ids, length // chunk)
    (running_max, total, acc), _ = jax.lax.scan(step, init, xs)
    out = (acc / total[..., None]).astype(q.dtype).transpose(0, 3, 1, 2, 4)
    return out, running_max + jnp.log(total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(q, k, v, segment_ids, scale, window, chunk):
    return _chunked_forward(q, k, v, segment_ids, scale, window, chunk)[0]


def _chunked_fwd(q, k, v, segment_ids, scale, window, chunk):
    out, lse = _chunked_forward(q, k, v, segment_ids, scale, window, chunk)
    # k and v as they came in (sharded along the sequence, if it is): each chunk is gathered
    # again when the backward pass reaches it.
    return out, (q, k, v, segment_ids, out, lse)


def _chunked_bwd(scale, window, chunk, residuals, d_out):
    """Flash-attention backward: per key chunk, recompute the probabilities from the saved
    log-sum-exp, then dV = P^T dO, dS = P (dO V^T - rowsum(dO * O)), dQ += dS K, dK = dS^T Q."""
    q, k, v, segment_ids, out, lse = residuals
    d_out = d_out.astype(jnp.float32).transpose(0, 2, 3, 1, 4)  # [b, kv, g, q, d]
    delta = jnp.sum(d_out * out.astype(jnp.float32).transpose(0, 2, 3, 1, 4), -1)

    def step(d_q, x):
        k_chunk, v_chunk, kv_seg = _gather_kv(*x[:3])
        kv_index = x[3]
        scores, visible = _chunk_scores(q, k_chunk, segment_ids, kv_seg, kv_index, scale, window)
        probs = jnp.where(visible, jnp.exp(scores - lse[..., None]), 0.0)
        d_v = jnp.einsum("bkgqc,bkgqd->bckd", probs, d_out)
        d_probs = jnp.einsum("bkgqd,bckd->bkgqc", d_out, v_chunk.astype(jnp.float32))
        d_scores = probs * (d_probs - delta[..., None]) * scale
        d_q = d_q + jnp.einsum("bkgqc,bckd->bqkgd", d_scores, k_chunk.astype(jnp.float32))
        d_k = jnp.einsum("bkgqc,bqkgd->bckd", d_scores, q.astype(jnp.float32))
        # Each device's partial sums go to the devices that own those keys (reduce-scatter).
        return d_q, tuple(nn.with_logical_constraint(g, splash.KV_AXES) for g in (d_k, d_v))

    xs = _key_chunks(k, v, segment_ids, q.shape[1] // chunk)
    d_q, (d_k, d_v) = jax.lax.scan(step, jnp.zeros(q.shape, jnp.float32), xs)
    d_k, d_v = (_unchunk(g).astype(k.dtype) for g in (d_k, d_v))
    return d_q.astype(q.dtype), d_k, d_v, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, scale: float, window: int, chunk: int
) -> Array:
    """Online-softmax attention over key chunks of `chunk` tokens (must divide the length);
    chunk j holds keys j, j + n, j + 2n, ... of the n chunks (`strided_chunks`)."""
    b, length, heads, d = q.shape
    chunk = min(chunk, length)
    out = _chunked(_group(q, k.shape[2]), k, v, segment_ids, scale, window, chunk)
    return out.reshape(b, length, heads, d)


def attend(
    model: ml_collections.ConfigDict, q: Array, k: Array, v: Array, mask: Array, decoding: bool
) -> Array:
    """The attention output [b, q, heads, d] under `mask`, the input `training_mask` or (when
    `decoding`, k and v then the cache) `decoding_mask` built: decoding runs einsum, training
    the configured kernel as the backend allows (`resolve`)."""
    impl = "einsum" if decoding else resolve(model.attention, model.dtype, target_platform())
    if impl == "splash" and q.shape[1] % splash.BLOCKS[-1]:
        # Splash tiles rows in blocks of 128 (training rows are, by validation); a row that is
        # not (model init's one-token row, a scoring batch) takes the XLA kernel, same mask input.
        impl = "xla"
    scale = config_lib.head_dim(model) ** -0.5
    window = model.sliding_window
    if impl == "einsum":
        return einsum_attention(q, k, v, mask, scale, jnp.dtype(model.attention_score_dtype))
    if impl in ("xla", "cudnn"):
        return dot_product_attention(q, k, v, mask, scale, window, impl)
    if impl == "splash":
        return splash.sharded_splash_attention(q, k, v, mask, scale, window)
    return chunked_attention(q, k, v, mask, scale, window, model.attention_chunk)
