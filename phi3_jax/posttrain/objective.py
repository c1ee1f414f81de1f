"""What a run trains, chosen by train.objective: its data iterator, held-out data and steps.

lm (pretraining) and sft both train next-token cross-entropy with the train loop's steps; sft's
documents are chat conversations whose loss mask keeps the assistant's tokens (`sft`).
"""

from __future__ import annotations

from collections.abc import Callable

import grain
import ml_collections
from jax.sharding import Mesh

from phi3_jax.data import pipeline
from phi3_jax.posttrain import sft
from phi3_jax.train import step as step_lib


def records(config: ml_collections.ConfigDict, tokenizer) -> pipeline.Records | None:
    """How the run's records become documents (None: pretraining's text documents)."""
    return sft.records(config, tokenizer) if config.train.objective == "sft" else None


def train_iterator(config: ml_collections.ConfigDict, tokenizer) -> grain.DatasetIterator:
    """The run's training batches (save/restore with grain.checkpoint.*)."""
    return pipeline.train_iterator(config, tokenizer, records=records(config, tokenizer))


def eval_datasets(config: ml_collections.ConfigDict, tokenizer) -> dict[str, grain.IterDataset]:
    """Per source, its held-out batches."""
    opts = pipeline.options_from_config(config)
    return pipeline.eval_datasets(opts, tokenizer, records(config, tokenizer))


def make_steps(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Callable, Callable]:
    """(train_step(state, batch), eval_step(params, batch)) jitted on the mesh."""
    return step_lib.make_train_step(config, mesh), step_lib.make_eval_step(config, mesh)
