"""The model as pure functions of (config, params): initialisation, logits, hidden states, and
cached decoding, for every architecture of the table (`architectures`).

Parameters are a plain pytree (no Flax boxes). Their logical axis names come from
`logical_axes`, computed with `jax.eval_shape`, so nothing is allocated to learn the layout.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phi3_jax.model import architectures, layers, rope

Array = jax.Array


def _dummy_inputs() -> tuple[Array, Array, Array]:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1), jnp.int32)


def boxed_init(config: ml_collections.ConfigDict, rng: Array):
    """Initial parameters still wrapped in nn.LogicallyPartitioned (for eval_shape and specs)."""
    return architectures.of(config).decoder(config.model).init(rng, *_dummy_inputs())["params"]


def init_params(config: ml_collections.ConfigDict, rng: Array):
    """Initial parameters as a plain pytree of arrays."""
    return nn.meta.unbox(boxed_init(config, rng))


def _abstract_boxed(config: ml_collections.ConfigDict):
    return jax.eval_shape(lambda rng: boxed_init(config, rng), jax.random.key(0))


def abstract_params(config: ml_collections.ConfigDict):
    """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct), allocating nothing."""
    return nn.meta.unbox(_abstract_boxed(config))


def logical_axes(config: ml_collections.ConfigDict):
    """Each parameter's logical axis names, as a pytree of PartitionSpec."""
    return nn.get_partition_spec(_abstract_boxed(config))


def param_count(config: ml_collections.ConfigDict) -> int:
    """Total number of parameters, from shapes alone."""
    return sum(x.size for x in jax.tree.leaves(abstract_params(config)))


def _default_inputs(tokens, positions, segment_ids) -> tuple[Array, Array, Array]:
    """int32 tokens; positions 0..seq-1 and one segment per row unless given."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens)
    return tokens, positions, segment_ids


def logits(
    config: ml_collections.ConfigDict,
    params,
    tokens: Array,
    *,
    positions: Array | None = None,
    segment_ids: Array | None = None,
    dropout_rng: Array | None = None,
    rope_factors: tuple[Array, Array] | None = None,
) -> Array:
    """float32 logits [batch, seq, vocab] for int tokens [batch, seq].

    positions default to 0..seq-1 and segment_ids to one document per row; packed rows pass both
    (positions restarting per document, segment 0 for padding). A `dropout_rng` turns dropout on
    (training); without one the model is deterministic. Phi-3 mini/medium have no dropout.
    `rope_factors` (short, long), arrays that may be traced, replace a LongRoPE model's factors
    (a model without LongRoPE refuses them).
    """
    tokens, positions, segment_ids = _default_inputs(tokens, positions, segment_ids)
    model = architectures.of(config).decoder(config.model, dropout_rng is None)
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    inputs = (tokens, positions, segment_ids)
    return model.apply({"params": params}, *inputs, rope_factors=rope_factors, rngs=rngs)[0]


def hidden_states(
    config: ml_collections.ConfigDict,
    params,
    tokens: Array,
    *,
    positions: Array | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """The final-norm hidden states [batch, seq, hidden] that `logits` projects; `lm_head_logits`
    of them equals `logits`. An architecture without that split (phi3small) is an error."""
    tokens, positions, segment_ids = _default_inputs(tokens, positions, segment_ids)
    model = _split(config, "hidden_states").hidden_decoder(config.model)
    return model.apply({"params": params}, tokens, positions, segment_ids)[0]


def lm_head_logits(config: ml_collections.ConfigDict, params, hidden: Array) -> Array:
    """float32 logits of (a slice of) `hidden_states`."""
    head = _split(config, "lm_head_logits").lm_head(config.model)
    logits = head.apply(
        {"params": params["lm_head"]},
        hidden,
        method=lambda module, x: layers.project(module, config.model)(x),
    )
    return logits.astype(jnp.float32)


def _split(config: ml_collections.ConfigDict, entry_point: str) -> architectures.Architecture:
    """The architecture, if its logits split into hidden states and an lm_head."""
    arch = architectures.of(config)
    if arch.hidden_decoder is None:
        raise ValueError(
            f"{entry_point}: model.architecture={arch.name!r} has no separate lm_head "
            "(its logits come from `logits` only)"
        )
    return arch


def init_cache(
    config: ml_collections.ConfigDict, batch: int, length: int, start: Array | None = None
) -> dict:
    """An empty key/value cache for decoding up to `length` tokens per row: per layer k and v
    [layers, batch, length, kv_heads, head_dim] in the compute dtype, each row's write slot
    `index` [batch] (0) and the slot where its sequence begins, `start` [batch] (default 0; a
    left-padded row begins after its padding). LongRoPE models also keep the token ids
    [batch, length], to recompute the cache when a row first grows past the original length."""
    m = config.model
    shape = (m.num_layers, batch, length, m.num_kv_heads, m.hidden_size // m.num_heads)
    zeros = jnp.zeros(shape, layers.dtype_of(m.dtype))
    start = jnp.zeros((batch,), jnp.int32) if start is None else jnp.asarray(start, jnp.int32)
    cache = {"kv": {"k": zeros, "v": zeros}, "index": jnp.zeros((batch,), jnp.int32)}
    cache["start"] = start
    if m.rope_scaling == "longrope":
        cache["tokens"] = jnp.zeros((batch, length), jnp.int32)
    return cache


def _decode_step(config, params, tokens: Array, cache: dict, lengths: Array, picks=None):
    """The decoder over `tokens` written into the cache from each row's index on: the logits
    of every token, or with `picks` [batch, k] only of those positions of the call."""
    positions = (cache["index"] - cache["start"])[:, None] + jnp.arange(tokens.shape[1])
    inputs = (tokens, positions, jnp.ones_like(tokens), cache, lengths)
    arch = architectures.of(config)
    if picks is not None and arch.hidden_decoder is not None:
        # Only the picked positions go through lm_head (a long prompt's [n, vocab] logits are
        # the largest array of a prefill).
        hidden, kv = arch.hidden_decoder(config.model).apply({"params": params}, *inputs)
        out = lm_head_logits(config, params, jnp.take_along_axis(hidden, picks[..., None], 1))
    else:
        out, kv = arch.decoder(config.model).apply({"params": params}, *inputs)
        if picks is not None:
            out = jnp.take_along_axis(out, picks[..., None], axis=1)
    return out, {**cache, "kv": kv, "index": cache["index"] + lengths}


def _recompute(config, params, tokens: Array, cache: dict, lengths: Array, picks=None):
    """`_decode_step`'s result by running each row's whole sequence (the cached token ids and
    these) through the model again, every key and value recomputed (phi3 only)."""
    index = cache["index"]
    picks = jnp.arange(tokens.shape[1])[None] if picks is None else picks
    fresh = {**cache, "index": jnp.zeros_like(index)}
    return _decode_step(
        config, params, cache["tokens"], fresh, index + lengths, index[:, None] + picks
    )


def decode(
    config: ml_collections.ConfigDict,
    params,
    tokens: Array,
    cache: dict,
    lengths: Array | None = None,
    *,
    last_only: bool = False,
):
    """Logits of `tokens` [batch, n] that continue the cached rows, and the updated cache; with
    `last_only`, only each row's last real token's logits [batch, vocab].

    The prompts go through once, then one token per call. Row b's tokens are written from its
    slot cache["index"][b] on and sit at positions index - start; only its first `lengths[b]`
    (default n) count: the index advances by that many, so a right-padded prompt's padding is
    overwritten by the tokens that follow it before anything attends to it. Left padding is the
    slots before cache["start"], which nothing attends to.

    Every call gives each row the logits of a full forward pass over its sequence so far. For
    LongRoPE that means the long factors at every position once the sequence is longer than
    original_max_position_embeddings: the call in which a row with cached tokens first grows
    past it recomputes the whole cache from the token ids (as HF regenerates its cache then).
    Every architecture decodes through the same cache and contract.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    n = tokens.shape[1]
    lengths = jnp.full(tokens.shape[:1], n, jnp.int32) if lengths is None else lengths
    picks = (lengths - 1)[:, None] if last_only else None
    step = functools.partial(_decode_step, config, picks=picks)
    if "tokens" in cache:
        cache = {**cache, "tokens": layers.write_cache(cache["tokens"], tokens, cache["index"])}
        before = cache["index"] - cache["start"]
        original = config.model.original_max_position_embeddings
        longer = rope.uses_long_factors(before + lengths, original)
        crosses = (before > 0) & ~rope.uses_long_factors(before, original) & longer
        recompute = functools.partial(_recompute, config, picks=picks)
        logits, cache = jax.lax.cond(
            jnp.any(crosses), recompute, step, params, tokens, cache, lengths
        )
    else:
        logits, cache = step(params, tokens, cache, lengths)
    return (logits[:, 0] if last_only else logits), cache
