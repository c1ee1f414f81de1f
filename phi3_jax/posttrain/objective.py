"""What a run trains, chosen by train.objective: its data iterator, held-out data and steps.

lm (pretraining) and sft both train next-token cross-entropy with the train loop's steps; sft's
documents are chat conversations whose loss mask keeps the assistant's tokens (`sft`). dpo trains
on preference pairs with the DPO loss against a frozen reference (`dpo`).
"""

from __future__ import annotations

from collections.abc import Callable

import grain
import ml_collections
from jax.sharding import Mesh, NamedSharding

from phi3_jax.data import pipeline
from phi3_jax.posttrain import dpo, sft
from phi3_jax.train import step as step_lib


def records(config: ml_collections.ConfigDict, tokenizer) -> pipeline.Records | None:
    """How the run's records become documents (None: pretraining's text documents)."""
    return sft.records(config, tokenizer) if config.train.objective == "sft" else None


def train_iterator(config: ml_collections.ConfigDict, tokenizer) -> grain.DatasetIterator:
    """The run's training batches (save/restore with grain.checkpoint.*)."""
    if config.train.objective == "dpo":
        return dpo.train_iterator(config, tokenizer)
    return pipeline.train_iterator(config, tokenizer, records=records(config, tokenizer))


def eval_datasets(config: ml_collections.ConfigDict, tokenizer) -> dict[str, grain.IterDataset]:
    """Per source, its held-out batches of the whole global batch, as one reader makes them: the
    same documents in the same rows for any process count (each process feeds its own rows of
    them, `sharding.process_rows`)."""
    if config.train.objective == "dpo":
        return dpo.eval_datasets(config, tokenizer)
    opts = pipeline.options_from_config(config, *pipeline.ONE_READER)
    return pipeline.eval_datasets(opts, tokenizer, records(config, tokenizer))


def batch_sharding(config: ml_collections.ConfigDict, mesh: Mesh) -> NamedSharding:
    """The sharding of the data arrays of a batch."""
    if config.train.objective == "dpo":
        return dpo.batch_shardings(config, mesh)["tokens"]
    return step_lib.batch_shardings(config, mesh)["tokens"]


def tokens_per_step(config: ml_collections.ConfigDict) -> int:
    """Tokens through the model per train step (a DPO pair is two rows); MFU counts these, so for
    DPO it leaves out the reference's forward pass."""
    rows = 2 if config.train.objective == "dpo" else 1
    return rows * config.train.global_batch_size * config.train.seq_len


def make_steps(
    config: ml_collections.ConfigDict, mesh: Mesh, log: Callable[[str], None]
) -> tuple[Callable, Callable]:
    """(train_step(state, batch), eval_step(params, batch)) jitted on the mesh."""
    if config.train.objective == "dpo":
        return dpo.make_steps(config, mesh, log)
    return step_lib.make_train_step(config, mesh), step_lib.make_eval_step(config, mesh)
