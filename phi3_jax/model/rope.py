"""Rotary position embeddings and LongRoPE: every formula of them, in one place.

    inv_freq[i] = 1 / (rescale[i] * theta ** (2i / head_dim))      i < head_dim / 2
    angle[p, i] = p * inv_freq[i];   cos, sin = magnitude * cos(angle), magnitude * sin(angle)

Plain RoPE has rescale = 1 and magnitude 1. LongRoPE (Phi-3 mini-128K, medium-128K) rescales
each dimension pair by its short factor while a sequence fits the original context window, by its
long factor once it is longer (`uses_long_factors`), and scales cos/sin by the attention factor
sqrt(1 + ln(s) / ln(original)) for the context extension s = max / original (`attention_factor`).

The core (`inverse_frequencies`, `cos_sin`, `longrope_cos_sin`) takes the rescale factors as
ordinary arrays, so they may be traced: one compiled function can score many candidate factor
arrays. `rotary_cos_sin` reads them from the model config. Numerics follow Hugging Face: tables
in float32, the theta powers computed on the host as `modeling_rope_utils` does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phi3_jax import config as config_lib

Array = jax.Array


def attention_factor(extension: float, original_length: int) -> float:
    """LongRoPE's cos/sin magnitude for a context `extension` (max length / original length):
    sqrt(1 + ln(extension) / ln(original_length)), and 1 without extension."""
    if extension <= 1.0:
        return 1.0
    return math.sqrt(1.0 + math.log(extension) / math.log(original_length))


def model_attention_factor(model: ml_collections.ConfigDict) -> float:
    """The model's LongRoPE magnitude: `rope_attention_factor` if set, else `attention_factor` of
    max_position_embeddings / original_max_position_embeddings."""
    if model.rope_attention_factor:
        return model.rope_attention_factor
    original = model.original_max_position_embeddings
    return attention_factor(model.max_position_embeddings / original, original)


def inverse_frequencies(head_dim: int, theta: float, rescale: Array | None = None) -> Array:
    """inv_freq [head_dim / 2] (float32); `rescale` [head_dim / 2] (or [..., head_dim / 2]) divides
    each pair's frequency, as LongRoPE's factors do."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
    base = np.float32(theta) ** exponents
    if rescale is not None:
        base = jnp.asarray(rescale, jnp.float32) * base
    return 1.0 / jnp.asarray(base, jnp.float32)


def cos_sin(
    positions: Array, inv_freq: Array, magnitude: float | Array = 1.0
) -> tuple[Array, Array]:
    """cos and sin tables [batch, seq, head_dim] (float32) for int `positions` [batch, seq] and
    `inv_freq` [head_dim / 2], one per row [batch, 1, head_dim / 2] or one per token
    [batch, seq, head_dim / 2]; each pair's angle fills
    both halves (rotate-half layout)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles) * magnitude, jnp.sin(angles) * magnitude


def uses_long_factors(lengths: Array, original_length: int) -> Array:
    """HF's rule: a sequence of `lengths` tokens takes the long factors iff it is longer than the
    original context window."""
    return lengths > original_length


def document_lengths(positions: Array, segment_ids: Array) -> Array:
    """Per token [batch, seq], the length of its document in a packed row: its segment's largest
    position + 1 (positions restart at 0 per document; segment 0, the padding, is one too)."""

    def row(p: Array, s: Array) -> Array:
        # Segment ids are 0..seq: at most one document per token.
        longest = jax.ops.segment_max(p, s, num_segments=p.shape[0] + 1)
        return longest[s] + 1

    return jax.vmap(row)(positions, segment_ids)


def longrope_cos_sin(
    positions: Array,
    use_long: Array,
    short_factor: Array,
    long_factor: Array,
    head_dim: int,
    theta: float,
    magnitude: float | Array,
) -> tuple[Array, Array]:
    """LongRoPE's tables: rescaled by `long_factor` where `use_long` (a bool, one per row, or one
    per token [batch, seq]) is true and by `short_factor` elsewhere (each [head_dim / 2],
    possibly traced)."""
    use_long = jnp.asarray(use_long)
    if use_long.ndim < 2:
        use_long = jnp.broadcast_to(use_long, positions.shape[:1])[:, None]
    use_long = jnp.broadcast_to(use_long, positions.shape)[..., None]
    inv_freq = jnp.where(
        use_long,
        inverse_frequencies(head_dim, theta, long_factor),
        inverse_frequencies(head_dim, theta, short_factor),
    )
    return cos_sin(positions, inv_freq, magnitude)


def rotary_cos_sin(
    model: ml_collections.ConfigDict,
    positions: Array,
    use_long: Array | None = None,
    factors: tuple[Array, Array] | None = None,
    segment_ids: Array | None = None,
) -> tuple[Array, Array]:
    """The model's cos and sin tables [batch, seq, head_dim] (float32) for `positions`.

    With LongRoPE, `use_long` (a bool, one per row or one per token) picks the long factors. By
    default it is HF's rule for one forward call, the largest position + 1 exceeds
    original_max_position_embeddings; given the `segment_ids` of packed rows, HF's rule applied
    to each document as if it were its own call (`document_lengths`): a short document keeps the
    short factors in a row that also holds a long one (the "mixed context window" of training).
    `factors` (short, long), arrays that may be traced, replace the config's (the factor search
    scores candidates through one compiled function).
    """
    head_dim = config_lib.head_dim(model)
    if model.rope_scaling != "longrope":
        if factors is not None:
            raise ValueError(
                f"rope factors given to a model with rope_scaling={model.rope_scaling}"
            )
        return cos_sin(positions, inverse_frequencies(head_dim, model.rope_theta))
    original = model.original_max_position_embeddings
    if use_long is None and segment_ids is not None:
        use_long = uses_long_factors(document_lengths(positions, segment_ids), original)
    elif use_long is None:
        use_long = uses_long_factors(jnp.max(positions) + 1, original)
    short_factor, long_factor = factors or (model.rope_short_factor, model.rope_long_factor)
    return longrope_cos_sin(
        positions,
        use_long,
        short_factor,
        long_factor,
        head_dim,
        model.rope_theta,
        model_attention_factor(model),
    )


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate-half RoPE over the full head dim; x is [batch, seq, heads, head_dim]."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return x * cos + rotated * sin
