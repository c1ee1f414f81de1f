"""The Phi-3 decoder (embed -> scan(blocks) -> norm -> lm_head) of mini, mini-128K and medium.

A Flax linen module; `functional` runs it (and Phi-3-small's) as pure functions of a plain
parameter pytree.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phi3_jax.model import attention, layers, rope

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
            layers.project(lm_head(m, name="lm_head"), m)(x).astype(jnp.float32),
            ("batch", "length", "vocab"),
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
