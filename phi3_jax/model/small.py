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
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from phi3_jax import config as config_lib
from phi3_jax.model import blocksparse, layers

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

    def projection(self, shape, axes, einsum_str, name) -> nn.Einsum:
        return nn.Einsum(
            shape=shape,
            einsum_str=einsum_str,
            dtype=layers.dtype_of(self.model.dtype),
            param_dtype=layers.dtype_of(self.model.param_dtype),
            kernel_init=layers.normal_init(self.model, axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, _BIAS_AXES[name]),
            name=name,
        )

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, segment_ids: Array) -> Array:
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
            layers.apply_rotary(q, cos, sin), ("batch", "length", "heads", None)
        )
        k = nn.with_logical_constraint(
            layers.apply_rotary(k, cos, sin), ("batch", "length", "kv_heads", None)
        )
        scale = softmax_scale(m)
        if self.dense:
            out = blocksparse.dense_attention(q, k, v, mask[:, None], scale)
        else:
            spec = blocksparse.BlocksparseSpec.from_model(m)
            out = blocksparse.blocksparse_attention(q, k, v, segment_ids, spec, scale)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", None))
        return self.projection(
            (m.num_heads, head_dim, m.hidden_size),
            ("heads", "head_dim", "embed"),
            "blhk,hkd->bld",
            "o_proj",
        )(out)


class MLP(nn.Module):
    """GEGELU MLP with biases: down(gegelu(gate(x), up(x))), then dropout."""

    model: ml_collections.ConfigDict
    deterministic: bool

    def projection(self, features, axes, name, stddev) -> nn.Dense:
        return nn.Dense(
            features,
            dtype=layers.dtype_of(self.model.dtype),
            param_dtype=layers.dtype_of(self.model.param_dtype),
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
            name=name,
        )

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
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, segment_ids: Array) -> Array:
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attn_in = layer_norm(self.model, "input_layernorm")(x)
        attn = Attention(self.model, self.dense, name="self_attn")
        h = x + attn(attn_in, cos, sin, mask, segment_ids)
        mlp_in = layer_norm(self.model, "post_attention_layernorm")(h)
        return h + MLP(self.model, self.deterministic, name="mlp")(mlp_in)


class BlockGroup(nn.Module):
    """dense_attention_every_n_layers consecutive layers: blocksparse ones, then a dense one.

    Sub-layer j of group n is HF layer n * group_size + j, stored as `block_{j}`.
    """

    model: ml_collections.ConfigDict
    deterministic: bool

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, segment_ids: Array):
        block_class = _remat(Block, self.model.remat)
        for j in range(self.model.dense_attention_every_n_layers):
            block = block_class(
                self.model, is_dense_layer(self.model, j), self.deterministic, name=f"block_{j}"
            )
            x = block(x, cos, sin, mask, segment_ids)
        return x, None  # (carry, per-group output) for nn.scan


def _remat(block_class, policy: str):
    if policy == "none":
        return block_class
    # Imported here: transformer dispatches to this module, and owns the remat policies.
    from phi3_jax.model.transformer import REMAT_POLICIES

    return nn.remat(block_class, policy=REMAT_POLICIES[policy], prevent_cse=False)


class Phi3Small(nn.Module):
    """The Phi-3-small causal language model; float32 logits [batch, seq, vocab]."""

    model: ml_collections.ConfigDict
    deterministic: bool = True

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, segment_ids: Array) -> Array:
        m = self.model
        embed = nn.Embed(
            m.vocab_size,
            m.hidden_size,
            dtype=layers.dtype_of(m.dtype),
            param_dtype=layers.dtype_of(m.param_dtype),
            embedding_init=layers.normal_init(m, ("vocab", "embed")),
            name="embed_tokens",
        )
        x = nn.Dropout(m.embedding_dropout)(embed(tokens), deterministic=self.deterministic)
        if m.mup_embedding_multiplier > 0:
            x = x * m.mup_embedding_multiplier
        cos, sin = layers.rotary_cos_sin(m, positions)
        mask = layers.attention_mask(segment_ids, 0)
        group_size = m.dense_attention_every_n_layers
        num_groups = m.num_layers // group_size
        groups = nn.scan(
            BlockGroup,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=num_groups,
            unroll=1 if m.scan_layers else num_groups,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = groups(m, self.deterministic, name="layers")(x, cos, sin, mask, segment_ids)
        x = layer_norm(m, "final_layernorm")(x)
        # Tied embeddings: the output projection is the embedding matrix.
        out = embed.attend(x).astype(jnp.float32) / m.mup_width_multiplier
        if m.dummy_token_ids:
            dummy = np.zeros(m.vocab_size, bool)
            dummy[list(m.dummy_token_ids)] = True
            out = jnp.where(dummy, -jnp.inf, out)
        return nn.with_logical_constraint(out, ("batch", "length", "vocab"))
