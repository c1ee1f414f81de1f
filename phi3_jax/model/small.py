"""The Phi-3-small decoder (PHI3.md §3), a Flax linen module.

    x = dropout(embed(tokens)) * mup_embedding_multiplier
    per layer i:  h = x + attn_i(layernorm(x));  x = h + dropout(mlp(layernorm(h)))
    logits = layernorm(x) @ embed.T / mup_width_multiplier, dummy tokens at -inf

LayerNorms carry a bias and so do all linears. Attention is grouped-query with rotary embeddings
and a muP softmax scale (mup_attn_multiplier / head_dim); layer i is dense iff
(i + 1) % dense_attention_every_n_layers == 0 and blocksparse otherwise. The MLP is GEGELU:
quick_gelu(clip(gate)) * (clip(up) + 1), HF's even/odd columns of `up_proj` kept as two kernels.
Layers are scanned in groups of dense_attention_every_n_layers (blocksparse..., dense), so the
compiled graph holds one group whatever the depth. Dropout acts only when `deterministic` is False
(then the `dropout` rng is needed).

Decoding (`phi3_jax.model.decode`, a cache from `init_cache`: per layer k and v [layers, batch,
length, kv_heads, head_dim], as for mini) writes each layer's keys and values into its slice of
the cache; dense layers attend over the cache under the causal decode mask, blocksparse layers
under that mask ANDed with the rule's blocks (counted from each sequence's first position), so
every step equals a full forward pass over the sequence so far.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phi3_jax import config as config_lib
from phi3_jax.model import attention, blocksparse, layers, rope

Array = jax.Array

# Logical axes of the bias of each projection (the kernel's output axes).
_BIAS_AXES = {
    "q_proj": ("heads", "head_dim"),
    "k_proj": ("kv_heads", "head_dim"),
    "v_proj": ("kv_heads", "head_dim"),
    "o_proj": ("embed",),
}


def softmax_scale(model: ml_collections.ConfigDict) -> float:
    """muP: mup_attn_multiplier / head_dim; without mup_use_scaling, 1 / sqrt(head_dim)."""
    head_dim = config_lib.head_dim(model)
    if model.mup_use_scaling:
        return model.mup_attn_multiplier / head_dim
    return head_dim**-0.5


def is_dense_layer(model: ml_collections.ConfigDict, index: int) -> bool:
    """Whether layer `index` (0-based) attends densely (HF: (i + 1) % n == 0)."""
    return (index + 1) % model.dense_attention_every_n_layers == 0


def gegelu(gate: Array, up: Array, limit: float) -> Array:
    """quick_gelu(min(gate, limit)) * (clip(up, -limit, limit) + 1); infinities pass unclipped."""
    gate = jnp.where(jnp.isinf(gate), gate, jnp.minimum(gate, limit))
    up = jnp.where(jnp.isinf(up), up, jnp.clip(up, -limit, limit))
    return gate * jax.nn.sigmoid(1.702 * gate) * (up + 1)


def layer_norm(model: ml_collections.ConfigDict, name: str) -> nn.LayerNorm:
    """LayerNorm with scale and bias, statistics in float32 (two-pass variance, as torch)."""
    return nn.LayerNorm(
        epsilon=model.layer_norm_eps,
        dtype=layers.dtype_of(model.dtype),
        param_dtype=layers.dtype_of(model.param_dtype),
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class Attention(nn.Module):
    """Biased GQA projections, rotary, then blocksparse or dense attention."""

    model: ml_collections.ConfigDict
    dense: bool

    def projection(self, shape, axes, einsum_str, name) -> Callable[[Array], Array]:
        return layers.einsum_projection(
            self.model,
            einsum_str,
            shape=shape,
            dtype=layers.dtype_of(self.model.dtype),
            param_dtype=layers.dtype_of(self.model.param_dtype),
            kernel_init=layers.normal_init(self.model, axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, _BIAS_AXES[name]),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask: Array,
        sparse: Array,
        kv: dict | None,
        index: Array | None,
    ) -> tuple[Array, dict | None]:
        """The output and this layer's cache `kv` with the new keys written at slot `index`
        [batch] (kv None: no decoding). `mask` [batch, q, k] is the dense layers'; `sparse` is
        the blocksparse layers' segment ids [batch, seq] (the fast path builds its mask from
        them), or when decoding their mask over the cache [batch, heads, q, cache]."""
        m = self.model
        head_dim = config_lib.head_dim(m)
        kv_shape = (m.hidden_size, m.num_kv_heads, head_dim)
        kv_axes = ("embed", "kv_heads", "head_dim")
        q = self.projection(
            (m.hidden_size, m.num_heads, head_dim),
            ("embed", "heads", "head_dim"),
            "bld,dhk->blhk",
            "q_proj",
        )(x)
        k = self.projection(kv_shape, kv_axes, "bld,dhk->blhk", "k_proj")(x)
        v = self.projection(kv_shape, kv_axes, "bld,dhk->blhk", "v_proj")(x)
        q = nn.with_logical_constraint(
            rope.apply_rotary(q, cos, sin), ("batch", "length", "heads", None)
        )
        k = nn.with_logical_constraint(
            rope.apply_rotary(k, cos, sin), ("batch", "length", "kv_heads", None)
        )
        if kv is not None:
            kv = layers.update_cache(kv, k, v, index)
            k, v = kv["k"], kv["v"]
        scale = softmax_scale(m)
        if self.dense:
            out = attention.einsum_attention(q, k, v, mask, scale)
        elif kv is not None:
            out = attention.einsum_attention(q, k, v, sparse, scale)
        else:
            spec = blocksparse.BlocksparseSpec.from_model(m)
            out = blocksparse.blocksparse_attention(q, k, v, sparse, spec, scale)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", None))
        out = self.projection(
            (m.num_heads, head_dim, m.hidden_size),
            ("heads", "head_dim", "embed"),
            "blhk,hkd->bld",
            "o_proj",
        )(out)
        return out, kv


class MLP(nn.Module):
    """GEGELU MLP with biases: down(gegelu(gate(x), up(x))), then dropout."""

    model: ml_collections.ConfigDict
    deterministic: bool

    def projection(self, features, axes, name, stddev) -> Callable[[Array], Array]:
        dense = nn.Dense(
            features,
            dtype=layers.dtype_of(self.model.dtype),
            param_dtype=layers.dtype_of(self.model.param_dtype),
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
            name=name,
        )
        return layers.project(dense, self.model)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        m = self.model
        std = m.initializer_range
        gate = self.projection(m.intermediate_size, ("embed", "mlp"), "gate_proj", std)(x)
        up = self.projection(m.intermediate_size, ("embed", "mlp"), "up_proj", std)(x)
        hidden = nn.with_logical_constraint(
            gegelu(gate, up, m.gegelu_limit), ("batch", "length", "mlp")
        )
        # HF's _init_weights draws down_proj with std / sqrt(2 * layers) (two residual adds each).
        down_std = std / np.sqrt(2 * m.num_layers)
        out = self.projection(m.hidden_size, ("mlp", "embed"), "down_proj", down_std)(hidden)
        return nn.Dropout(m.ffn_dropout)(out, deterministic=self.deterministic)


class Block(nn.Module):
    """Pre-norm block: h = x + attn(ln(x)); y = h + dropout(mlp(ln(h)))."""

    model: ml_collections.ConfigDict
    dense: bool
    deterministic: bool

    @nn.compact
    def __call__(self, x, cos, sin, mask, sparse, kv=None, index=None) -> tuple[Array, dict | None]:
        """The residual stream and this layer's updated cache (see `Attention`)."""
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attn_in = layer_norm(self.model, "input_layernorm")(x)
        attn_out, kv = Attention(self.model, self.dense, name="self_attn")(
            attn_in, cos, sin, mask, sparse, kv, index
        )
        h = x + attn_out
        mlp_in = layer_norm(self.model, "post_attention_layernorm")(h)
        return h + MLP(self.model, self.deterministic, name="mlp")(mlp_in), kv


class BlockGroup(nn.Module):
    """dense_attention_every_n_layers consecutive layers: blocksparse ones, then a dense one.

    Sub-layer j of group n is HF layer n * group_size + j, stored as `block_{j}`; its cache is
    kv[..][j] of the group's [group_size, batch, length, kv_heads, head_dim].
    """

    model: ml_collections.ConfigDict
    deterministic: bool

    @nn.compact
    def __call__(self, x, cos, sin, mask, sparse, kv=None, index=None):
        """(carry, per-group output) for nn.scan: the residual stream, the group's cache."""
        block_class = layers.remat(Block, self.model.remat)
        new_kv = []
        for j in range(self.model.dense_attention_every_n_layers):
            block = block_class(
                self.model, is_dense_layer(self.model, j), self.deterministic, name=f"block_{j}"
            )
            layer_kv = None if kv is None else jax.tree.map(lambda c, j=j: c[j], kv)
            x, layer_kv = block(x, cos, sin, mask, sparse, layer_kv, index)
            new_kv.append(layer_kv)
        if kv is None:
            return x, None
        return x, jax.tree.map(lambda *layer: jnp.stack(layer), *new_kv)


class Phi3Small(nn.Module):
    """The Phi-3-small causal language model; float32 logits [batch, seq, vocab]."""

    model: ml_collections.ConfigDict
    deterministic: bool = True

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
        """(float32 logits, the key/value cache with this call's keys and values written), with
        the cache contract of `transformer.Phi3`: row b's new tokens are written from slot
        cache["index"][b] on, the first `lengths[b]` of them real (`functional.decode` advances
        the index), and attend to the row's slots from cache["start"][b] on; segment_ids is then
        unused, and so is `lengths` (Phi3's LongRoPE reads it; small has plain RoPE, so
        `rope_factors`, Phi3's LongRoPE override, are refused by `rope.rotary_cos_sin`)."""
        m = self.model
        embed = layers.embedding(m)
        x = nn.Dropout(m.embedding_dropout)(embed(tokens), deterministic=self.deterministic)
        if m.mup_embedding_multiplier > 0:
            x = x * m.mup_embedding_multiplier
        cos, sin = rope.rotary_cos_sin(m, positions, factors=rope_factors)
        group_size = m.dense_attention_every_n_layers
        num_groups = m.num_layers // group_size
        if cache is None:
            mask, sparse, kv, index = (
                attention.attention_mask(segment_ids, 0),
                segment_ids,
                None,
                None,
            )
        else:
            index, start = cache["index"], cache["start"]
            cache_length = cache["kv"]["k"].shape[2]
            mask = attention.decode_mask(index, start, tokens.shape[1], cache_length, 0)
            slot_positions = jnp.arange(cache_length)[None] - start[:, None]
            sparse = mask[:, None] & blocksparse.decode_mask(
                blocksparse.BlocksparseSpec.from_model(m), m.num_heads, positions, slot_positions
            )
            # [layers, ...] -> [groups, group_size, ...]: layer n * group_size + j is block j of
            # group n.
            kv = jax.tree.map(
                lambda c: c.reshape(num_groups, group_size, *c.shape[1:]), cache["kv"]
            )
        groups = nn.scan(
            BlockGroup,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast),
            length=num_groups,
            unroll=1 if m.scan_layers else num_groups,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, kv = groups(m, self.deterministic, name="layers")(x, cos, sin, mask, sparse, kv, index)
        x = layer_norm(m, "final_layernorm")(x)
        # Tied embeddings: the output projection is the embedding matrix.
        out = embed.attend(x).astype(jnp.float32) / m.mup_width_multiplier
        if m.dummy_token_ids:
            dummy = np.zeros(m.vocab_size, bool)
            dummy[list(m.dummy_token_ids)] = True
            out = jnp.where(dummy, -jnp.inf, out)
        out = nn.with_logical_constraint(out, ("batch", "length", "vocab"))
        if cache is None:
            return out, None
        return out, jax.tree.map(lambda c: c.reshape(m.num_layers, *c.shape[2:]), kv)
