"""The train state (step, params, optimizer state, rng), its shardings, and initialisation into
shards: shapes come from `jax.eval_shape`, so no full-size array ever sits on one device."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax import model, sharding
from phi3_jax.train import optim


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; the optimizer itself is rebuilt from the config."""

    # Optimizer steps taken so far (int32 scalar).
    step: jax.Array
    # The model parameters, a plain pytree.
    params: Any
    # optax state: Adam moments sharded like the params, counters replicated.
    opt_state: optax.OptState
    # Typed PRNG key of the step's stochastic parts: dropout keys fold in the step (train.step's
    # dropout_key; only Phi-3-small has dropout).
    rng: jax.Array


def _rngs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
    # (params init, state) keys from train.seed.
    params_rng, state_rng = jax.random.split(jax.random.key(config.train.seed))
    return params_rng, state_rng


def _from_params(config: ml_collections.ConfigDict, tx: optax.GradientTransformation, params):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=_rngs(config)[1],
    )


def _init(config: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> TrainState:
    return _from_params(config, tx, model.init_params(config, _rngs(config)[0]))


def param_shardings(config: ml_collections.ConfigDict, mesh: Mesh):
    """NamedShardings of the params from the config's logical axis rules."""
    rules = sharding.logical_rules(config)
    return sharding.shardings(
        model.abstract_params(config), model.logical_axes(config), mesh, rules
    )


def state_shardings(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """A TrainState of NamedShardings: optimizer moments like their params, scalars replicated."""
    tx = optim.make_optimizer(config)
    params = param_shardings(config, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt_state = jax.eval_shape(functools.partial(_init, config, tx)).opt_state
    opt_state = optax.tree_map_params(
        tx,
        lambda _, param_sharding: param_sharding,
        abstract_opt_state,
        params,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def abstract_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """The state as ShapeDtypeStructs carrying their shardings (for AOT lowering and restore)."""
    shapes = jax.eval_shape(functools.partial(_init, config, optim.make_optimizer(config)))
    return jax.tree.map(
        lambda shape, s: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=s),
        shapes,
        state_shardings(config, mesh),
    )


def init_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
    """The initial state, created directly in its shards by one jitted function."""
    init = jax.jit(
        functools.partial(_init, config, optim.make_optimizer(config)),
        out_shardings=state_shardings(config, mesh),
    )
    return init()


def state_from_params(config: ml_collections.ConfigDict, mesh: Mesh, params) -> TrainState:
    """A fresh state (step 0, new optimizer moments) around given params, e.g. a converted
    checkpoint's, laid out in the state's shardings."""
    tx = optim.make_optimizer(config)
    shardings = state_shardings(config, mesh)
    build = jax.jit(
        functools.partial(_from_params, config, tx),
        in_shardings=(shardings.params,),
        out_shardings=shardings,
    )
    return build(params)
