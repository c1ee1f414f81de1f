"""The loss, the train step (with gradient accumulation) and the eval step, jitted over a mesh.

A batch is a dict of int32 [global_batch, seq_len] arrays, sharded over the batch mesh axes:
  tokens       model inputs
  targets      the next token of each input position
  positions    position of each token within its document (packing restarts it)
  segment_ids  document index within the row, 0 for padding
  loss_mask    1 where the target counts in the loss (0 on padding, later on prompts)
The loss is the cross-entropy averaged over the loss-masked tokens of the whole global batch, so
splitting the batch into microbatches changes nothing but the summation order (with dropout,
Phi-3-small's, it also changes which units drop: each microbatch draws its own mask).

Dropout keys are a pure function of the state's rng (from train.seed), the step and the
microbatch (`dropout_key`), so a resumed run draws the masks an uninterrupted one draws; eval and
generation pass no key and are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax import model, sharding
from phi3_jax.config import ConfigError
from phi3_jax.data.batch import BATCH_KEYS
from phi3_jax.model import attention
from phi3_jax.train import optim
from phi3_jax.train import state as state_lib
from phi3_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def token_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> Metrics:
    """Sums over loss-masked tokens of the cross-entropy (`ce`) and of logsumexp^2 (`z`)."""
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    mask = loss_mask.astype(jnp.float32)
    return {
        "ce": jnp.sum((log_normalizer - target_logits) * mask),
        "z": jnp.sum(jnp.square(log_normalizer) * mask),
    }


def chunked_token_sums(config: ml_collections.ConfigDict, params, hidden, batch: Batch) -> Metrics:
    """`token_sums` of the logits of `hidden` [batch, seq, embed], train.loss_chunk positions at
    a time: each chunk's fp32 logits are made, reduced and (in the backward pass) remade, so only
    one chunk's [batch, loss_chunk, vocab] logits exist at once. Chunks are strided
    (`attention.strided_chunks`), so a sequence-sharded `hidden` stays sharded."""
    chunks = hidden.shape[1] // config.train.loss_chunk

    @jax.checkpoint
    def accumulate(sums: Metrics, chunk) -> tuple[Metrics, None]:
        h, targets, loss_mask = chunk
        new = token_sums(model.lm_head_logits(config, params, h), targets, loss_mask)
        return jax.tree.map(jnp.add, sums, new), None

    zeros = {"ce": jnp.zeros(()), "z": jnp.zeros(())}
    xs = tuple(
        attention.strided_chunks(x, chunks) for x in (hidden, batch["targets"], batch["loss_mask"])
    )
    return jax.lax.scan(accumulate, zeros, xs)[0]


def loss_sums(
    config: ml_collections.ConfigDict, params, batch: Batch, dropout_rng: jax.Array | None = None
) -> Metrics:
    """Sums over loss-masked tokens of the cross-entropy (`ce`) and of logsumexp^2 (`z`); with
    train.loss_chunk the logits are made chunk by chunk (`chunked_token_sums`). A `dropout_rng`
    turns the model's dropout on (training); without one the loss is deterministic."""
    inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
    if config.train.loss_chunk:
        # phi3 only (validated), which has no dropout.
        hidden = model.hidden_states(config, params, batch["tokens"], **inputs)
        return chunked_token_sums(config, params, hidden, batch)
    logits = model.logits(config, params, batch["tokens"], **inputs, dropout_rng=dropout_rng)
    return token_sums(logits, batch["targets"], batch["loss_mask"])


def dropout_key(state_rng: jax.Array, step: jax.Array, microbatch: jax.Array) -> jax.Array:
    """The dropout key of one microbatch of one step: a pure function of the state's rng, the
    step and the microbatch index, so a resumed run draws the masks an uninterrupted one does."""
    return jax.random.fold_in(jax.random.fold_in(state_rng, step), microbatch)


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[batch, ...] -> [microbatches, batch // microbatches, ...], microbatch i = rows i::n.

    Strided rather than contiguous: each device's block of rows holds its share of every
    microbatch, so the split moves no data between devices.
    """

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
        # Axes between the batch and the length (DPO's chosen/rejected pair) are not split.
        batch, length = sharding.BATCH_AXES
        return nn.with_logical_constraint(x, (None, batch, *(None,) * (x.ndim - 3), length))

    return jax.tree.map(split, batch)


def accumulate_gradients(
    objective: Callable,
    params,
    batch: Batch,
    microbatches: int,
    param_shardings=None,
    dropout: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[object, Metrics]:
    """Gradients of `objective(params, microbatch, dropout_rng) -> (loss, sums)` summed over the
    batch's microbatches by a scan, and the sums summed. `param_shardings` (a pytree of
    shardings) pins the gradient accumulator to the params' layout. `dropout` = (state rng, step)
    turns dropout on, microbatch i with `dropout_key(rng, step, i)`."""

    def like_params(tree):
        if param_shardings is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, param_shardings)

    def rng_of(index):
        return None if dropout is None else dropout_key(*dropout, index)

    def accumulate(carry, xs: tuple[Batch, jax.Array]):
        grads, sums = carry
        microbatch, index = xs
        micro_grads, micro_sums = jax.grad(objective, has_aux=True)(
            params, microbatch, rng_of(index)
        )
        grads = like_params(jax.tree.map(jnp.add, grads, micro_grads))
        return (grads, jax.tree.map(jnp.add, sums, micro_sums)), None

    split = split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], split)
    shapes = jax.eval_shape(objective, params, first, rng_of(jnp.zeros((), jnp.int32)))[1]
    zeros = (
        like_params(jax.tree.map(jnp.zeros_like, params)),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
    )
    (grads, sums), _ = jax.lax.scan(accumulate, zeros, (split, jnp.arange(microbatches)))
    return grads, sums


def loss_and_grads(
    config: ml_collections.ConfigDict,
    params,
    batch: Batch,
    param_shardings=None,
    dropout: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[object, Metrics]:
    """Gradients of the global-batch objective, accumulated over train.microbatches.

    Each microbatch's sums are divided by the token count of the whole global batch, so the
    accumulated gradient is that of the global mean. `param_shardings` and `dropout` as in
    `accumulate_gradients`. Returns (grads, metrics).
    """
    tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    denominator = jnp.maximum(tokens, 1.0)
    z_coefficient = config.train.z_loss

    def objective(p, microbatch: Batch, rng: jax.Array | None):
        sums = loss_sums(config, p, microbatch, rng)
        return (sums["ce"] + z_coefficient * sums["z"]) / denominator, sums

    grads, sums = accumulate_gradients(
        objective, params, batch, config.train.microbatches, param_shardings, dropout
    )
    metrics = {
        "loss": sums["ce"] / denominator,
        "z_loss": z_coefficient * sums["z"] / denominator,
        "tokens": tokens,
    }
    return grads, metrics


def all_finite(tree) -> jax.Array:
    """True iff every float element of `tree` is finite (a boolean scalar)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def train_step(
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Batch,
    param_shardings=None,
    grads_fn: Callable = loss_and_grads,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on the global batch; metrics: loss, z_loss, grad_norm (before
    clipping), param_norm (after the update), learning_rate (used by this step), tokens,
    state_finite (the updated params and optimizer state hold no NaN or inf), and with
    train.on_nan=skip `skipped` (the update was dropped for a non-finite loss, grad norm or
    updated state). The model's dropout (Phi-3-small's) is on, keyed by the state's rng and step.
    `grads_fn` (`loss_and_grads`'s signature) gives the gradients and metrics: DPO's, or
    cross-entropy's."""
    grads, metrics = grads_fn(
        config, state.params, batch, param_shardings, dropout=(state.rng, state.step)
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics |= {
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "learning_rate": optim.learning_rate_schedule(config)(state.step),
    }
    # An update can overflow by itself (a huge learning rate) with a finite loss and gradient:
    # the new params and moments are checked too, so a non-finite state is never kept or saved.
    metrics["state_finite"] = all_finite((params, opt_state))
    if config.train.on_nan == "skip":
        # A non-finite loss or gradient would poison the params and Adam's moments: keep the old
        # ones, but still count the step (the data iterator has moved past its batch).
        finite = (
            jnp.isfinite(metrics["loss"])
            & jnp.isfinite(metrics["grad_norm"])
            & metrics["state_finite"]
        )
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state),
            (state.params, state.opt_state),
        )
        metrics["skipped"] = jnp.logical_not(finite)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def eval_step(config: ml_collections.ConfigDict, params, batch: Batch) -> Metrics:
    """Mean cross-entropy over the batch's loss-masked tokens, and their count (to weight it)."""
    sums = loss_sums(config, params, batch)
    tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
    return {"loss": sums["ce"] / jnp.maximum(tokens, 1.0), "tokens": tokens}


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Raise a one-line ConfigError if the global batch or its microbatches do not split evenly
    over the mesh's data-parallel axes."""
    dp = sharding.data_parallel_size(mesh, sharding.logical_rules(config))
    batch_size = config.train.global_batch_size
    if batch_size % dp:
        raise ConfigError(
            f"train.global_batch_size={batch_size}: must be a multiple of the data-parallel "
            f"size {dp} (the mesh axes the batch splits over, {dict(mesh.shape)})"
        )
    micro = batch_size // config.train.microbatches
    if micro % dp:
        raise ConfigError(
            f"train.microbatches={config.train.microbatches}: microbatches of {micro} rows "
            f"do not split over the data-parallel size {dp}"
        )


def batch_shardings(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, NamedSharding]:
    """The sharding of each batch array."""
    batch_sharding = sharding.batch_sharding(mesh, sharding.logical_rules(config))
    return dict.fromkeys(BATCH_KEYS, batch_sharding)


def make_train_step(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    grads_fn: Callable = loss_and_grads,
    shardings_of_batch: dict | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`train_step` jitted on the mesh: state donated, explicit in/out shardings, metrics
    replicated. Bad batch geometry raises before anything compiles. `grads_fn` and the batch's
    shardings (default: `batch_shardings`) are the objective's (posttrain.objective)."""
    check_batch(config, mesh)
    rules = sharding.logical_rules(config)
    tx = optim.make_optimizer(config)
    state_shardings = state_lib.state_shardings(config, mesh)

    def step(state: TrainState, batch: Batch):
        with sharding.activate(mesh, rules):
            return train_step(config, tx, state, batch, state_shardings.params, grads_fn)

    return jax.jit(
        step,
        in_shardings=(state_shardings, shardings_of_batch or batch_shardings(config, mesh)),
        out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
        compiler_options=compiler_options(config, mesh),
    )


def compiler_options(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, str]:
    """XLA options of the train step's compile: on a CPU mesh with train.cpu_dot_fusion=
    dots_only, YNNPACK takes each dot alone. Its default fusions fold the SwiGLU backward into a
    transposed [mlp, tokens] copy for the weight gradient's dot, which ran at ~200 MB/s and took
    a fifth of a 12-layer step of the bench model."""
    if mesh.devices.flat[0].platform != "cpu" or config.train.cpu_dot_fusion == "xla":
        return {}
    return {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def make_eval_step(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    eval_fn: Callable = eval_step,
    shardings_of_batch: dict | None = None,
) -> Callable[[object, Batch], Metrics]:
    """`eval_fn(config, params, batch)` (default `eval_step`) jitted on the mesh (params are not
    donated)."""
    rules = sharding.logical_rules(config)

    def step(params, batch: Batch):
        with sharding.activate(mesh, rules):
            return eval_fn(config, params, batch)

    batch_in = shardings_of_batch or batch_shardings(config, mesh)
    return jax.jit(
        step,
        in_shardings=(state_lib.param_shardings(config, mesh), batch_in),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
