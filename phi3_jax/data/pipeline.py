"""The online input pipeline: shards → mix by phase → tokenize → pack → batch → per-process batches.

Per phase, each named source (`sources.ShardSource`, tokenizing as it reads) is mixed with grain's
mixing by the phase's weights; documents become next-token pairs (`tokens` = ids[:-1], `targets` =
ids[1:], BOS/EOS framed) and are packed with grain's first-fit or concat-then-split packing into
rows of `seq_len`, then batched per process. The two Phi-3 phases are two such pipelines, each
prefetched by its own grain worker processes; `phases.PhasedIterDataset` takes batches
0..start-1 from phase 1 and the rest from phase 2, so the switch happens at the same batch whatever
the number of workers (a schedule of context lengths, `train.context_schedule`, cuts the run into
more such segments; `data.long_context` mixes whole long documents into rows of their own,
`long_context`). The iterator's state (grain's, JSON) saves and restores through orbax with
`grain.checkpoint.CheckpointSave/CheckpointRestore`, and carries the per-source counters
(`source_counters`). The train loop turns each per-process batch into global arrays with
`phi3_jax.sharding.global_batch`; nothing here uses JAX but the default process index and count.

Batch format, per process: `data.batch` (`BATCH_KEYS`, `train_row`).

Post-training plugs in through `Records`: the fields a source's records are read with and the
function that turns a record into ids (`phi3_jax.posttrain`); a document that also carries a
`trained` bool per id trains only the targets it marks (SFT: the assistant's tokens).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grain
import ml_collections
import numpy as np

from phi3_jax.config import PACKINGS
from phi3_jax.data import batch, long_context, workers
from phi3_jax.data.phases import PhasedIterDataset
from phi3_jax.data.shard_records import SourceSpec
from phi3_jax.data.sources import ReadOptions, ShardSource, counters


class Tokenizer(Protocol):
    """What the pipeline needs of a tokenizer (`phi3_jax.data.tokenizer.load`'s)."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class Records:
    """How a source's records become documents: read `fields` (empty: the text field's text) and
    pass each payload to `to_ids` (see `sources.ShardSource`)."""

    to_ids: Callable[[Any], Any]
    fields: tuple[str, ...] = ()
    # The documents carry `trained` (see the module docstring).
    trained: bool = False


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Everything the pipeline needs, resolved from the config (explicit for tests and tools)."""

    # Every source that a phase names, by name.
    sources: Mapping[str, SourceSpec]
    # Source name -> mixing weight, for phase 1 and (empty: no phase 2) phase 2.
    phase1: Mapping[str, float]
    phase2: Mapping[str, float]
    # Index of the first batch drawn from phase 2.
    phase2_start_step: int
    # Tokens per packed row.
    seq_len: int
    # Rows per batch of this process.
    batch_size: int
    # first_fit or concat_split (grain's packers).
    packing: str = "first_fit"
    # First-fit: rows packed together (more: less padding, more reordering).
    packing_bins: int = 16
    # grain worker processes per phase (0: in the main process).
    num_workers: int = 0
    # Batches buffered per worker.
    prefetch: int = 2
    # raise or skip (drop and count) bad shards and records.
    on_bad_record: str = "raise"
    # Fraction of each source held out for evaluation, by document hash.
    eval_fraction: float = 0.0
    # Batches per evaluation, from each source's held-out documents.
    eval_batches: int = 1
    # Seeds the shard order of each epoch and first-fit's row order.
    seed: int = 0
    # Start each document with BOS.
    add_bos: bool = True
    # This process among those sharing the shards.
    process_index: int = 0
    process_count: int = 1
    # Progressive context: (first step, row length) pairs; empty: seq_len throughout.
    context_schedule: tuple[tuple[int, int], ...] = ()
    # Long-document bucket (`long_context`): documents of at least this many ids kept whole
    # (0: off), the fraction of rows they fill, and the length short documents are cut at.
    long_min_tokens: int = 0
    long_fraction: float = 0.5
    short_len: int = 0


# The (process index, process count) of a reader of every row: held-out data is read this way
# on every process, so its documents and rows do not depend on the process count.
ONE_READER = (0, 1)


def _process_index_and_count() -> tuple[int, int]:
    # Imported here only: grain workers import this module and need no JAX.
    import jax

    return jax.process_index(), jax.process_count()


def options_from_config(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PipelineOptions:
    """PipelineOptions of a validated run config.

    `process_index`/`process_count` place this process among those feeding distinct rows of the
    global batch: JAX's process index and count by default; where processes replicate rows, the
    index of this process's row block and the number of blocks (`sharding.process_rows`).
    """
    if process_index is None or process_count is None:
        process_index, process_count = _process_index_and_count()
    if config.train.global_batch_size % process_count:
        raise ValueError(
            f"train.global_batch_size={config.train.global_batch_size} does not divide among "
            f"{process_count} processes"
        )
    data = config.data
    sources = {
        name: SourceSpec(
            name=name,
            globs=tuple(g for g in src.globs.split(",") if g),
            format=src.format,
            text_field=src.text_field,
        )
        for name, src in data.sources.items()
    }
    return PipelineOptions(
        sources=sources,
        phase1=dict(data.phase1),
        phase2=dict(data.phase2),
        phase2_start_step=data.phase2_start_step,
        seq_len=config.train.seq_len,
        batch_size=config.train.global_batch_size // process_count,
        packing=data.packing,
        packing_bins=data.packing_bins,
        num_workers=data.num_workers,
        prefetch=data.prefetch,
        on_bad_record=data.on_bad_record,
        eval_fraction=data.eval_fraction,
        eval_batches=data.eval_batches,
        seed=data.seed,
        add_bos=data.add_bos,
        process_index=process_index,
        process_count=process_count,
        context_schedule=tuple(tuple(entry) for entry in config.train.context_schedule),
        long_min_tokens=data.long_context.min_tokens,
        long_fraction=data.long_context.long_fraction,
        short_len=config.model.original_max_position_embeddings,
    )


@dataclasses.dataclass(frozen=True)
class DocumentIds:
    """A document's ids: [BOS] + encode(text) + EOS; pre-tokenized ids get the same framing."""

    tokenizer: Tokenizer
    add_bos: bool

    def __call__(self, payload: str | np.ndarray) -> np.ndarray:
        body = self.tokenizer.encode(payload) if isinstance(payload, str) else payload.tolist()
        head = [self.tokenizer.bos_id] if self.add_bos else []
        return np.asarray(head + body + [self.tokenizer.eos_id], dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class NextTokenPieces(grain.experimental.FlatMapTransform):
    """ids → next-token pairs, split into pieces of at most `max_len` (None: whole)."""

    max_len: int | None
    # Only MapDatasets need a bound; this transform runs on IterDatasets.
    max_fan_out: int = 1

    def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        ids = element["ids"]
        pairs = {"tokens": ids[:-1], "targets": ids[1:]}
        if "trained" in element:
            # A target counts in the loss where its id is trained.
            pairs["trained"] = element["trained"][1:].astype(np.int32)
        step = self.max_len or len(ids) - 1
        return [
            {key: value[i : i + step] for key, value in pairs.items()}
            for i in range(0, len(ids) - 1, step)
        ]


def _pack(examples: grain.IterDataset, opts: PipelineOptions, trained: bool) -> grain.IterDataset:
    lengths = {"tokens": opts.seq_len, "targets": opts.seq_len}
    if trained:
        lengths["trained"] = opts.seq_len
    if opts.packing == "first_fit":
        return grain.experimental.FirstFitPackIterDataset(
            examples, length_struct=lengths, num_packing_bins=opts.packing_bins, seed=opts.seed
        )
    if opts.packing == "concat_split":
        return grain.experimental.ConcatThenSplitIterDataset(examples, length_struct=lengths)
    raise ValueError(f"packing {opts.packing!r} is not one of {PACKINGS}")


def pack_rows(
    documents: grain.IterDataset,
    opts: PipelineOptions,
    pad_id: int,
    trained: bool = False,
    piece_len: int | None = None,
) -> grain.IterDataset:
    """Documents (`{"ids"}`, with `trained`: also `{"trained"}`) → next-token pairs (cut into
    pieces of at most `piece_len`, default a row) → packed rows in the train step's format."""
    # First-fit needs every piece to fit a row; concat-then-split splits long documents itself.
    row_len = opts.seq_len if opts.packing == "first_fit" else None
    max_len = min(piece_len, opts.seq_len) if piece_len else row_len
    examples = grain.experimental.FlatMapIterDataset(documents, NextTokenPieces(max_len))
    return _pack(examples, opts, trained).map(functools.partial(batch.train_row, pad_id=pad_id))


def pack_and_batch(
    documents: grain.IterDataset, opts: PipelineOptions, pad_id: int, trained: bool = False
) -> grain.IterDataset:
    """Documents → packed rows (`pack_rows`) → batches of `opts.batch_size`."""
    rows = pack_rows(documents, opts, pad_id, trained)
    return rows.batch(opts.batch_size, drop_remainder=True)


def bucketed_batches(
    documents: Callable[[], grain.IterDataset],
    opts: PipelineOptions,
    pad_id: int,
    trained: bool = False,
) -> grain.IterDataset:
    """Batches of long rows (documents of at least `opts.long_min_tokens` ids, whole up to a row)
    and short rows (the others, cut at `opts.short_len`), mixed by `opts.long_fraction`
    (`long_context`). `documents(bucket=, reports=)` builds one reading of the documents per
    bucket, keeping and counting only the bucket's documents (`sources.ReadOptions.keep`)."""
    buckets = [
        pack_rows(
            # The long bucket's reading reports the records' problems, for both.
            documents(bucket=long_context.InBucket(opts.long_min_tokens, long), reports=long),
            opts,
            pad_id,
            trained,
            piece_len=None if long else opts.short_len,
        )
        for long in (True, False)
    ]
    rows = long_context.mix_buckets(*buckets, opts.long_fraction)
    return rows.batch(opts.batch_size, drop_remainder=True)


def _records(opts: PipelineOptions, tokenizer: Tokenizer, records: Records | None) -> Records:
    return records or Records(DocumentIds(tokenizer, opts.add_bos))


def source(
    opts: PipelineOptions,
    name: str,
    records: Records,
    split: str,
    bucket: Callable[[np.ndarray], bool] | None = None,
    reports: bool = True,
) -> ShardSource:
    """The named source's documents of one split ("train" or "eval"); with `bucket`, those whose
    ids it accepts (`ReadOptions.keep`, `reports`)."""
    return ShardSource(
        dataclasses.replace(opts.sources[name], fields=records.fields),
        records.to_ids,
        ReadOptions(
            on_bad=opts.on_bad_record,
            split=split,
            eval_fraction=opts.eval_fraction,
            seed=opts.seed,
            keep=bucket,
            reports=reports,
        ),
        process_index=opts.process_index,
        process_count=opts.process_count,
    )


def mixed_documents(
    opts: PipelineOptions,
    weights: Mapping[str, float],
    tokenizer: Tokenizer,
    records: Records | None = None,
    bucket: Callable[[np.ndarray], bool] | None = None,
    reports: bool = True,
) -> grain.IterDataset:
    """One phase's training documents (`{"ids"}`), mixed by `weights` with grain's mixing; with
    `bucket`, one length bucket's (see `source`)."""
    names = sorted(weights)
    records = _records(opts, tokenizer, records)
    return grain.IterDataset.mix(
        [source(opts, name, records, "train", bucket, reports) for name in names],
        [weights[name] for name in names],
    )


def _phase_batches(
    opts: PipelineOptions,
    weights: Mapping[str, float],
    tokenizer: Tokenizer,
    records: Records | None,
) -> grain.IterDataset:
    trained = records is not None and records.trained
    if opts.long_min_tokens:
        documents = functools.partial(mixed_documents, opts, weights, tokenizer, records)
        batches = bucketed_batches(documents, opts, tokenizer.pad_id, trained)
    else:
        documents = mixed_documents(opts, weights, tokenizer, records)
        batches = pack_and_batch(documents, opts, tokenizer.pad_id, trained)
    if not opts.num_workers:
        return batches
    prefetched = batches.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch
        ),
        worker_init_fn=workers.exit_with_parent,
    )
    return prefetched.map(workers.own_memory)


def train_dataset(
    opts: PipelineOptions, tokenizer: Tokenizer, records: Records | None = None
) -> grain.IterDataset:
    """The endless training batches of this process: phase 1, then phase 2 from its start step,
    each cut where `opts.context_schedule` changes the row length (`long_context.segments`)."""
    segments = long_context.segments(
        opts.phase1,
        opts.phase2,
        opts.phase2_start_step,
        opts.context_schedule,
        opts.seq_len,
        opts.seed,
    )
    parents = [
        _phase_batches(
            dataclasses.replace(opts, seq_len=segment.seq_len, seed=segment.seed),
            segment.weights,
            tokenizer,
            records,
        )
        for segment in segments
    ]
    if len(parents) == 1:
        return parents[0]
    return PhasedIterDataset(parents, [segment.start for segment in segments])


def eval_datasets(
    opts: PipelineOptions, tokenizer: Tokenizer, records: Records | None = None
) -> dict[str, grain.IterDataset]:
    """Per source, `eval_batches` batches of its held-out documents (the same ones every time).

    Reaching them reads through the training documents around them, so build them once and keep
    the batches (`list(dataset)`) rather than iterating anew at each evaluation.
    """
    if not opts.eval_fraction:
        raise ValueError("eval batches need held-out documents: eval_fraction is 0")
    names = sorted({*opts.phase1, *opts.phase2})
    trained = records is not None and records.trained
    records = _records(opts, tokenizer, records)
    return {
        name: grain.experimental.LimitIterDataset(
            pack_and_batch(source(opts, name, records, "eval"), opts, tokenizer.pad_id, trained),
            opts.eval_batches,
        )
        for name in names
    }


def train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    process_index: int | None = None,
    process_count: int | None = None,
    records: Records | None = None,
) -> grain.DatasetIterator:
    """The training iterator of a run config (save/restore it with grain.checkpoint.*)."""
    opts = options_from_config(config, process_index, process_count)
    return iter(train_dataset(opts, tokenizer, records))


def source_counters(iterator: grain.DatasetIterator) -> dict[str, dict[str, int]]:
    """Per source: documents, tokens, bad_records, bad_shards read so far by this process.

    Counted into the packer as of its last packed group (up to `packing_bins` rows behind the
    batch just returned), summed over workers and phases; exact across save/restore.
    """
    return counters(iterator.get_state())
