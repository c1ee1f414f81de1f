"""Direct preference optimisation: preference pairs, the DPO losses, and the DPO train step.

Data: records {"prompt", "chosen", "rejected"} in the Hugging Face preference format: the prompt a
string (one user message) or a list of messages, each completion a string or a one-message list
[{"role": "assistant", ...}]. Each side is the prompt plus its completion in Phi-3's chat format;
its completion mask covers the completion's content and `<|end|>`. A pair becomes two unpacked
rows of train.seq_len ([2, seq_len] per key: chosen, rejected), batched to [batch, 2, seq_len].
A record that is not a pair (an empty completion, roles out of order, ...) is a bad record naming
the field; a pair longer than a row is dropped or truncated as sft.too_long says (counted).

Loss (Rafailov et al. 2023): with sequence log-probs summed over the completion tokens and the
log-ratios h_c = log pi(y_c|x) - log ref(y_c|x), h_r likewise, and delta = h_c - h_r,
  sigmoid: -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)  (eps: label
           smoothing, cDPO),
  ipo:     (h_c / n_c - h_r / n_r - 1 / (2 beta))^2 with n the completion lengths (TRL's
           length-normalised IPO, Azar et al. 2023),
  hinge:   max(0, 1 - beta delta),
averaged over the pairs of the global batch (so microbatching changes nothing). Chosen and
rejected go through the model in one forward of 2B rows. The reference is the run's starting
params (checkpoint.init_from, else the seeded random init), frozen and sharded like the policy; it
is an argument of the step, never part of the train state, the optimizer or a checkpoint.

Metrics: dpo/rewards_chosen and dpo/rewards_rejected (beta h, means over pairs),
dpo/reward_accuracy (pairs with the chosen reward above the rejected one), dpo/reward_margin, and
dpo/kl, the policy's KL to the reference per completion token (exact, from both next-token
distributions).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax import model, sharding
from phi3_jax.data import pipeline
from phi3_jax.data.batch import BATCH_KEYS
from phi3_jax.data.formats import Bad
from phi3_jax.data.sources import Counted
from phi3_jax.posttrain import chat
from phi3_jax.train import restore as restore_lib
from phi3_jax.train import state as state_lib
from phi3_jax.train import step as step_lib

SIDES = ("chosen", "rejected")
PAIR_FIELDS = ("prompt", *SIDES)

Batch = dict[str, jax.Array]


def _messages(value: Any, field: str, role: str) -> list[chat.Message]:
    """A string as one message of `role`, or the list of messages as it is."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise chat.ConversationError(
        f"{field}: a string or a list of messages, not {type(value).__name__}"
    )


def encode_side(
    tokenizer: chat.ChatTokenizer, prompt: list[chat.Message], completion: Any, field: str
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, completion mask) of the prompt followed by one assistant completion."""
    reply = _messages(completion, field, "assistant")
    if len(reply) != 1 or not isinstance(reply[0], dict) or reply[0].get("role") != "assistant":
        raise chat.ConversationError(f"{field}: must be one assistant message")
    if not reply[0].get("content"):
        raise chat.ConversationError(f"{field}: empty completion")
    try:
        messages = chat.check_messages(prompt + reply)
    except chat.ConversationError as error:
        raise chat.ConversationError(f"{field}: {error}") from None
    ids, trained = chat.encode_conversation(tokenizer, messages)
    # The completion is the last message's trained tokens; earlier assistant turns are prompt.
    prompt_len = len(chat.encode_prompt(tokenizer, prompt)) - len(
        tokenizer.encode(chat.GENERATION_PROMPT)
    )
    trained[:prompt_len] = False
    return ids, trained


@dataclasses.dataclass(frozen=True)
class PairIds:
    """A preference record → {"ids" (both sides, for the counters), "chosen", "chosen_mask",
    "rejected", "rejected_mask"}, a `Bad`, or a `Counted` (too long)."""

    tokenizer: chat.ChatTokenizer
    # Ids per row: a row holds seq_len next-token pairs.
    max_ids: int
    # "drop" or "truncate" (config.TOO_LONG).
    too_long: str

    def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray] | Bad | Counted:
        try:
            prompt = _messages(record["prompt"], "prompt", "user")
            sides = {s: encode_side(self.tokenizer, prompt, record[s], s) for s in SIDES}
        except chat.ConversationError as error:
            return Bad(str(error))
        longest = max(len(ids) for ids, _ in sides.values())
        counter = None
        if longest > self.max_ids:
            if self.too_long == "drop":
                return Counted("too_long_dropped")
            sides = {s: (ids[: self.max_ids], m[: self.max_ids]) for s, (ids, m) in sides.items()}
            if not all(m[1:].any() for _, m in sides.values()):
                return Counted("too_long_dropped")
            counter = "too_long_truncated"
        document = {"ids": np.concatenate([ids for ids, _ in sides.values()])}
        for side, (ids, mask) in sides.items():
            document |= {side: ids, f"{side}_mask": mask}
        return Counted(counter, document) if counter else document


def pair_rows(document: dict[str, np.ndarray], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A pair as the train step's arrays, each [2, seq_len] (chosen, rejected), padded."""
    rows = {key: np.zeros((2, seq_len), np.int32) for key in BATCH_KEYS}
    rows["tokens"][:] = rows["targets"][:] = pad_id
    rows["loss_mask"] = np.zeros((2, seq_len), np.float32)
    for i, side in enumerate(SIDES):
        ids, mask = document[side], document[f"{side}_mask"]
        n = len(ids) - 1
        rows["tokens"][i, :n] = ids[:-1]
        rows["targets"][i, :n] = ids[1:]
        rows["positions"][i, :n] = np.arange(n)
        rows["segment_ids"][i, :n] = 1
        rows["loss_mask"][i, :n] = mask[1:]
    return rows


def records(config: ml_collections.ConfigDict, tokenizer: chat.ChatTokenizer) -> pipeline.Records:
    """How a DPO run's sources are read: the pair fields, through `PairIds`."""
    to_ids = PairIds(tokenizer, config.train.seq_len + 1, config.sft.too_long)
    return pipeline.Records(to_ids, fields=PAIR_FIELDS)


def _batches(documents: grain.IterDataset, config, tokenizer, opts) -> grain.IterDataset:
    rows = functools.partial(pair_rows, seq_len=config.train.seq_len, pad_id=tokenizer.pad_id)
    return documents.map(rows).batch(opts.batch_size, drop_remainder=True)


def train_iterator(config: ml_collections.ConfigDict, tokenizer) -> grain.DatasetIterator:
    """The run's batches of pairs (phase 1's mixture; a DPO run has one phase)."""
    opts = pipeline.options_from_config(config)
    documents = pipeline.mixed_documents(opts, opts.phase1, tokenizer, records(config, tokenizer))
    batches = _batches(documents, config, tokenizer, opts)
    prefetch = grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch
    )
    return iter(batches.mp_prefetch(prefetch))


def eval_datasets(config: ml_collections.ConfigDict, tokenizer) -> dict[str, grain.IterDataset]:
    """Per source, data.eval_batches global batches of its held-out pairs, as one reader makes
    them (the same for any process count; see `objective.eval_datasets`)."""
    opts = pipeline.options_from_config(config, *pipeline.ONE_READER)
    pairs = records(config, tokenizer)
    return {
        name: grain.experimental.LimitIterDataset(
            _batches(pipeline.source(opts, name, pairs, "eval"), config, tokenizer, opts),
            opts.eval_batches,
        )
        for name in sorted(opts.phase1)
    }


def sequence_logps(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Per row, the log-probability of its masked targets: logits [rows, seq, vocab] → [rows]."""
    logps = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logps = jnp.take_along_axis(logps, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(target_logps * mask, axis=-1)


def pair_losses(
    dpo: ml_collections.ConfigDict,
    policy: jax.Array,
    reference: jax.Array,
    lengths: jax.Array,
) -> dict[str, jax.Array]:
    """Per pair, the loss and the rewards, from [pairs, 2] (chosen, rejected) sequence log-probs
    of the policy and the reference and the completion lengths."""
    ratios = policy - reference
    delta = ratios[:, 0] - ratios[:, 1]
    if dpo.loss == "sigmoid":
        eps = dpo.label_smoothing
        losses = -(1 - eps) * jax.nn.log_sigmoid(dpo.beta * delta) - eps * jax.nn.log_sigmoid(
            -dpo.beta * delta
        )
    elif dpo.loss == "ipo":
        per_token = ratios / jnp.maximum(lengths, 1.0)
        losses = jnp.square(per_token[:, 0] - per_token[:, 1] - 1 / (2 * dpo.beta))
    else:
        losses = jax.nn.relu(1 - dpo.beta * delta)
    rewards = dpo.beta * jax.lax.stop_gradient(ratios)
    return {"loss": losses, "chosen": rewards[:, 0], "rejected": rewards[:, 1]}


def _as_rows(pairs: Batch) -> Batch:
    # [pairs, 2, seq] → [2 pairs, seq]: a pair's two rows stay side by side, on one device.
    return {k: v.reshape(-1, v.shape[-1]) for k, v in pairs.items() if k in BATCH_KEYS}


def _logits(config, params, rows: Batch, dropout_rng=None) -> jax.Array:
    inputs = dict(positions=rows["positions"], segment_ids=rows["segment_ids"])
    return model.logits(config, params, rows["tokens"], **inputs, dropout_rng=dropout_rng)


def _token_kl(policy_logits, reference_logits, mask) -> jax.Array:
    """Sum over masked positions of KL(policy || reference) of the next-token distributions."""
    p = jax.nn.log_softmax(policy_logits.astype(jnp.float32), axis=-1)
    q = jax.nn.log_softmax(reference_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.sum(jnp.exp(p) * (p - q), axis=-1) * mask)


def pair_sums(config, params, reference, pairs: Batch, dropout_rng=None) -> dict[str, jax.Array]:
    """Sums over the pairs of a (micro)batch: loss, rewards, reward accuracy and margin, the
    policy's KL to the reference, completion tokens and pairs."""
    rows = _as_rows(pairs)
    mask = rows["loss_mask"].astype(jnp.float32)
    policy_logits = _logits(config, params, rows, dropout_rng)
    reference_logits = jax.lax.stop_gradient(_logits(config, reference, rows))
    by_pair = functools.partial(jnp.reshape, shape=(-1, 2))
    lengths = by_pair(jnp.sum(mask, axis=-1))
    terms = pair_losses(
        config.dpo,
        by_pair(sequence_logps(policy_logits, rows["targets"], mask)),
        by_pair(sequence_logps(reference_logits, rows["targets"], mask)),
        lengths,
    )
    return {
        "loss": jnp.sum(terms["loss"]),
        "rewards_chosen": jnp.sum(terms["chosen"]),
        "rewards_rejected": jnp.sum(terms["rejected"]),
        "reward_accuracy": jnp.sum((terms["chosen"] > terms["rejected"]).astype(jnp.float32)),
        "reward_margin": jnp.sum(terms["chosen"] - terms["rejected"]),
        "kl": jax.lax.stop_gradient(_token_kl(policy_logits, reference_logits, mask)),
        "tokens": jnp.sum(mask),
        "pairs": jnp.asarray(lengths.shape[0], jnp.float32),
    }


def _metrics(sums: dict[str, jax.Array], pairs: jax.Array) -> dict[str, jax.Array]:
    means = {f"dpo/{k}": sums[k] / pairs for k in ("rewards_chosen", "rewards_rejected")}
    means |= {f"dpo/{k}": sums[k] / pairs for k in ("reward_accuracy", "reward_margin")}
    means["dpo/kl"] = sums["kl"] / jnp.maximum(sums["tokens"], 1.0)
    return {"loss": sums["loss"] / pairs, "tokens": sums["tokens"], **means}


def loss_and_grads(config, params, batch: Batch, param_shardings=None, dropout=None):
    """Gradients of the mean DPO loss over the global batch's pairs, accumulated over
    train.microbatches; `batch["reference"]` holds the frozen reference params."""
    reference = batch["reference"]
    pairs = {k: v for k, v in batch.items() if k != "reference"}
    total = jnp.asarray(pairs["tokens"].shape[0], jnp.float32)

    def objective(p, microbatch: Batch, rng):
        sums = pair_sums(config, p, reference, microbatch, rng)
        return sums["loss"] / total, sums

    grads, sums = step_lib.accumulate_gradients(
        objective, params, pairs, config.train.microbatches, param_shardings, dropout
    )
    return grads, _metrics(sums, total)


def eval_step(config, params, batch: Batch) -> dict[str, jax.Array]:
    """The held-out mean DPO loss, weighted by pairs (`tokens` counts pairs here)."""
    pairs = {k: v for k, v in batch.items() if k != "reference"}
    sums = pair_sums(config, params, batch["reference"], pairs)
    return {"loss": sums["loss"] / sums["pairs"], "tokens": sums["pairs"]}


def batch_shardings(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
    """[pairs, 2, seq] arrays split over the batch axes like the pretraining rows; the reference
    params in their param shardings."""
    rows = sharding.batch_sharding(mesh, sharding.logical_rules(config)).spec
    pair = NamedSharding(mesh, PartitionSpec(rows[0], None, *rows[1:]))
    shardings = dict.fromkeys(BATCH_KEYS, pair)
    return shardings | {"reference": state_lib.param_shardings(config, mesh)}


def reference_params(config: ml_collections.ConfigDict, mesh: Mesh, log: Callable[[str], None]):
    """The run's starting params (frozen): checkpoint.init_from's, else the seeded random init."""
    if config.checkpoint.init_from:
        log(f"dpo: reference = the params of {config.checkpoint.init_from} (frozen, not saved)")
        return restore_lib.restore_sharded_params(config.checkpoint.init_from, config, mesh)
    log(f"dpo: reference = the random init of train.seed={config.train.seed} (frozen, not saved)")
    return state_lib.init_state(config, mesh).params


def make_steps(config: ml_collections.ConfigDict, mesh: Mesh, log: Callable[[str], None]):
    """(train_step(state, batch), eval_step(params, batch)) with the reference passed in."""
    reference = reference_params(config, mesh, log)
    shardings = batch_shardings(config, mesh)
    train = step_lib.make_train_step(config, mesh, loss_and_grads, shardings)
    evaluate = step_lib.make_eval_step(config, mesh, eval_step, shardings)
    return (
        lambda state, batch: train(state, {**batch, "reference": reference}),
        lambda params, batch: evaluate(params, {**batch, "reference": reference}),
    )
