"""Phi-3 building blocks: RMSNorm, attention (with rotary embeddings, see `rope`), SwiGLU MLP.

Every parameter is created with its logical axis names (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`); the sharding rules that map them onto a device mesh live outside the model.
Numerics follow Hugging Face's `modeling_phi3.py`: norms, softmax and rotary tables in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from phi3_jax import config as config_lib
from phi3_jax.model import attention, rope

Array = jax.Array


def dtype_of(name: str) -> jnp.dtype:
    """A config dtype string ("bfloat16", ...) as a JAX dtype."""
    return jnp.dtype(name)


def normal_init(model: ml_collections.ConfigDict, axes: tuple[str, ...]):
    """HF's initialiser, N(0, initializer_range), tagged with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(model.initializer_range), axes)


# Rematerialisation policies of `model.remat` ("none": no remat; "full": save nothing).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(block_class: type[nn.Module], policy: str) -> type[nn.Module]:
    """`block_class` rematerialised per `policy` (a `model.remat` value)."""
    if policy == "none":
        return block_class
    # prevent_cse is unnecessary under scan and only slows the unrolled loop's compile otherwise.
    return nn.remat(block_class, policy=REMAT_POLICIES[policy], prevent_cse=False)


def embedding(model: ml_collections.ConfigDict) -> nn.Embed:
    """The token embedding `embed_tokens` [vocab, hidden], initialised as HF does."""
    return nn.Embed(
        model.vocab_size,
        model.hidden_size,
        dtype=dtype_of(model.dtype),
        param_dtype=dtype_of(model.param_dtype),
        embedding_init=normal_init(model, ("vocab", "embed")),
        name="embed_tokens",
    )


class RMSNorm(nn.Module):
    """RMSNorm as in HF Phi-3: normalise in float32, cast back, then scale."""

    model: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            dtype_of(self.model.param_dtype),
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(
            jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.model.rms_norm_eps
        )
        return scale.astype(x.dtype) * normed.astype(x.dtype)


def project(
    module: nn.Module, model: ml_collections.ConfigDict, features: int = 1
) -> Callable[[Array], Array]:
    """`module`, a projection over its input's last `features` axes, as a function of
    [batch, length, *features] inputs; with `model.flat_projections` the leading axes are first
    flattened into one token axis and the output's restored. The same dot either way: only the
    gradient dots' shapes change (one contracting axis, not two)."""
    if not model.flat_projections:
        return module

    def over_flat_tokens(x: Array) -> Array:
        y = module(x.reshape(-1, *x.shape[x.ndim - features :]))
        return y.reshape(*x.shape[: x.ndim - features], *y.shape[1:])

    return over_flat_tokens


def einsum_projection(
    model: ml_collections.ConfigDict, einsum_str: str, **einsum_args
) -> Callable[[Array], Array]:
    """An `nn.Einsum` projection of [batch, length, ...] inputs (`einsum_str` names the batch
    "b" and the length "l"), through `project`: with flat tokens its equation drops the batch."""
    equation = einsum_str.replace("b", "") if model.flat_projections else einsum_str
    features = len(einsum_str.split(",")[0]) - 2  # the input's axes after batch and length
    return project(nn.Einsum(einsum_str=equation, **einsum_args), model, features)


def write_cache(cache: Array, new: Array, index: Array) -> Array:
    """`new` [batch, n, ...] written into `cache` [batch, length, ...] at slot `index` [batch]."""

    def write_row(row: Array, value: Array, at: Array) -> Array:
        return jax.lax.dynamic_update_slice_in_dim(row, value.astype(row.dtype), at, axis=0)

    return jax.vmap(write_row)(cache, new, index)


def update_cache(kv: dict, k: Array, v: Array, index: Array) -> dict:
    """One layer's cache {"k", "v"} [batch, length, kv_heads, head_dim] with this call's keys and
    values [batch, n, kv_heads, head_dim] written at slot `index` [batch]."""
    return {
        name: nn.with_logical_constraint(
            write_cache(kv[name], new, index), ("batch", None, "kv_heads", None)
        )
        for name, new in (("k", k), ("v", v))
    }


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings (MHA when kv heads == heads)."""

    model: ml_collections.ConfigDict

    def projection(self, shape, axes, einsum_str, name) -> Callable[[Array], Array]:
        # nn.Einsum creates its kernel at full rank; DenseGeneral initialises a flat 2-D kernel
        # whose logical constraint fails once a mesh is active (flax issue #3676).
        return einsum_projection(
            self.model,
            einsum_str,
            shape=shape,
            use_bias=False,
            dtype=dtype_of(self.model.dtype),
            param_dtype=dtype_of(self.model.param_dtype),
            kernel_init=normal_init(self.model, axes),
            name=name,
        )

    @nn.compact
    def __call__(
        self, x: Array, cos: Array, sin: Array, mask: Array, kv: dict | None, index: Array | None
    ) -> tuple[Array, dict | None]:
        """Attention output, and the key/value cache `kv` with this call's keys written at slot
        `index` [batch] (kv is None when not decoding). `mask` is what `attention` built for this
        call (`attention.training_mask` or `attention.decoding_mask`)."""
        m = self.model
        head_dim = config_lib.head_dim(m)
        q_shape = (m.hidden_size, m.num_heads, head_dim)
        kv_shape = (m.hidden_size, m.num_kv_heads, head_dim)
        kv_axes = ("embed", "kv_heads", "head_dim")
        q = self.projection(q_shape, ("embed", "heads", "head_dim"), "bld,dhk->blhk", "q_proj")(x)
        k = self.projection(kv_shape, kv_axes, "bld,dhk->blhk", "k_proj")(x)
        v = self.projection(kv_shape, kv_axes, "bld,dhk->blhk", "v_proj")(x)
        q = nn.with_logical_constraint(
            rope.apply_rotary(q, cos, sin), ("batch", "length", "heads", None)
        )
        k = nn.with_logical_constraint(
            rope.apply_rotary(k, cos, sin), ("batch", "length", "kv_heads", None)
        )

        if kv is not None:
            kv = update_cache(kv, k, v, index)
            k, v = kv["k"], kv["v"]

        out = nn.with_logical_constraint(
            attention.attend(m, q, k, v, mask, decoding=kv is not None),
            ("batch", "length", "heads", None),
        )
        out = self.projection(
            (m.num_heads, head_dim, m.hidden_size),
            ("heads", "head_dim", "embed"),
            "blhk,hkd->bld",
            "o_proj",
        )(out)
        return out, kv


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); HF fuses gate and up as [gate | up]."""

    model: ml_collections.ConfigDict

    def projection(self, features, axes, name) -> Callable[[Array], Array]:
        dense = nn.Dense(
            features,
            use_bias=False,
            dtype=dtype_of(self.model.dtype),
            param_dtype=dtype_of(self.model.param_dtype),
            kernel_init=normal_init(self.model, axes),
            name=name,
        )
        return project(dense, self.model)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        m = self.model
        gate = self.projection(m.intermediate_size, ("embed", "mlp"), "gate_proj")(x)
        up = self.projection(m.intermediate_size, ("embed", "mlp"), "up_proj")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        return self.projection(m.hidden_size, ("mlp", "embed"), "down_proj")(hidden)
