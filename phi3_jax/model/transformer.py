"""The Phi-3 decoder (embed -> scan(blocks) -> norm -> lm_head), used as a pure function of params.

`init_params` and `logits` are the stable entry points; parameters are a plain pytree (no Flax
boxes). Their logical axis names come from `logical_axes`, computed with `jax.eval_shape`, so
nothing is allocated to learn the layout.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phi3_jax.model import attention, layers, rope, small

Array = jax.Array


class DecoderBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); y = h + mlp(norm(h))."""

    model: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x, cos, sin, mask, kv=None, index=None) -> tuple[Array, dict | None]:
        """(carry, per-layer output) for nn.scan: the residual stream, and this layer's kv cache."""
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attn_in = layers.RMSNorm(self.model, name="input_layernorm")(x)
        attn_out, kv = layers.Attention(self.model, name="self_attn")(
            attn_in, cos, sin, mask, kv, index
        )
        h = x + attn_out
        mlp_in = layers.RMSNorm(self.model, name="post_attention_layernorm")(h)
        y = h + layers.MLP(self.model, name="mlp")(mlp_in)
        return y, kv


class Phi3(nn.Module):
    """The Phi-3 causal language model (mini, mini-128K, medium)."""

    model: ml_collections.ConfigDict
    # True: return the final-norm hidden states instead of logits (the loss applies lm_head per
    # sequence chunk, see `lm_head_logits`).
    hidden_only: bool = False

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array,
        segment_ids: Array,
        cache: dict | None = None,
        lengths: Array | None = None,
        rope_factors: tuple[Array, Array] | None = None,
    ) -> tuple[Array, dict | None]:
        """(float32 logits, or with hidden_only the final-norm hidden states; the key/value cache
        with this call's keys and values written). With a cache (decoding, see `decode`), row
        b's tokens are written from slot cache["index"][b] on, the first `lengths[b]` of them
        real, and attend to the row's slots from cache["start"][b] on; segment_ids is unused.
        `rope_factors` (short, long) replace the config's LongRoPE factors (`rope.rotary_cos_sin`)."""
        m = self.model
        x = layers.embedding(m)(tokens)
        kv, index = None, None
        if cache is None:
            # LongRoPE's factors per document of the packed rows (`rope.rotary_cos_sin`).
            cos, sin = rope.rotary_cos_sin(
                m, positions, factors=rope_factors, segment_ids=segment_ids
            )
            mask = attention.training_mask(m, segment_ids)
        else:
            kv, index, start = cache["kv"], cache["index"], cache["start"]
            cache_length = kv["k"].shape[2]
            # Each row picks its LongRoPE factors from its own length after this call.
            use_long = rope.uses_long_factors(
                index + lengths - start, m.original_max_position_embeddings
            )
            cos, sin = rope.rotary_cos_sin(m, positions, use_long, rope_factors)
            mask = attention.decoding_mask(m, index, start, tokens.shape[1], cache_length)
        # One block definition scanned over a stacked 'layers' axis; scan_layers=False unrolls
        # the same loop fully, so both modes share one parameter layout.
        blocks = nn.scan(
            layers.remat(DecoderBlock, m.remat),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
            length=m.num_layers,
            unroll=1 if m.scan_layers else m.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, kv = blocks(m, name="layers")(x, cos, sin, mask, kv, index)
        x = layers.RMSNorm(m, name="norm")(x)
        if self.hidden_only:
            return nn.with_logical_constraint(x, ("batch", "length", "embed")), kv
        out = nn.with_logical_constraint(
            lm_head(m, name="lm_head")(x).astype(jnp.float32), ("batch", "length", "vocab")
        )
        return out, kv


def lm_head(model: ml_collections.ConfigDict, name: str | None = None) -> nn.DenseGeneral:
    """The output projection hidden -> vocab (compute dtype; callers cast to float32)."""
    return nn.DenseGeneral(
        model.vocab_size,
        use_bias=False,
        dtype=layers.dtype_of(model.dtype),
        param_dtype=layers.dtype_of(model.param_dtype),
        kernel_init=layers.normal_init(model, ("embed", "vocab")),
        name=name,
    )


def _dummy_inputs() -> tuple[Array, Array, Array]:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1), jnp.int32)


def boxed_init(config: ml_collections.ConfigDict, rng: Array):
    """Initial parameters still wrapped in nn.LogicallyPartitioned (for eval_shape and specs)."""
    if config.model.architecture == "phi3small":
        return small.Phi3Small(config.model).init(rng, *_dummy_inputs())["params"]
    return Phi3(config.model).init(rng, *_dummy_inputs())["params"]


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
    (phi3 only).
    """
    tokens, positions, segment_ids = _default_inputs(tokens, positions, segment_ids)
    if config.model.architecture == "phi3small":
        model = small.Phi3Small(config.model, deterministic=dropout_rng is None)
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return model.apply({"params": params}, tokens, positions, segment_ids, rngs=rngs)[0]
    inputs = (tokens, positions, segment_ids)
    return Phi3(config.model).apply({"params": params}, *inputs, rope_factors=rope_factors)[0]


def hidden_states(
    config: ml_collections.ConfigDict,
    params,
    tokens: Array,
    *,
    positions: Array | None = None,
    segment_ids: Array | None = None,
) -> Array:
    """The final-norm hidden states [batch, seq, hidden] that `logits` projects (phi3 only);
    `lm_head_logits` of them equals `logits`."""
    tokens, positions, segment_ids = _default_inputs(tokens, positions, segment_ids)
    model = Phi3(config.model, hidden_only=True)
    return model.apply({"params": params}, tokens, positions, segment_ids)[0]


def lm_head_logits(config: ml_collections.ConfigDict, params, hidden: Array) -> Array:
    """float32 logits of (a slice of) `hidden_states` (phi3 only)."""
    head = lm_head(config.model)
    return head.apply({"params": params["lm_head"]}, hidden).astype(jnp.float32)


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
    if config.model.architecture == "phi3small":
        out, kv = small.Phi3Small(config.model).apply({"params": params}, *inputs)
        if picks is not None:
            out = jnp.take_along_axis(out, picks[..., None], axis=1)
    elif picks is None:
        out, kv = Phi3(config.model).apply({"params": params}, *inputs)
    else:
        # Only the picked positions go through lm_head (a long prompt's [n, vocab] logits are
        # the largest array of a prefill).
        hidden, kv = Phi3(config.model, hidden_only=True).apply({"params": params}, *inputs)
        out = lm_head_logits(config, params, jnp.take_along_axis(hidden, picks[..., None], 1))
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
    Phi-3-small (`small.Phi3Small`) decodes through the same cache and contract.
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
