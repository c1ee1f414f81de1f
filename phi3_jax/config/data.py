"""The `data` section: tokenizer, sources, the two mixing phases, packing, workers, bad input."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail

# Shard formats of a data source (jsonl covers .jsonl, .jsonl.gz and .jsonl.zst).
DATA_FORMATS = ("jsonl", "parquet", "arrayrecord_text", "arrayrecord_tokens")
PACKINGS = ("first_fit", "concat_split")
ON_BAD_RECORD = ("raise", "skip")
# Tokenizer files (phi3_jax.data.tokenizer): a sentencepiece .model (ids as Hugging Face's
# conversion of it gives), a Hugging Face tokenizer directory, or tiktoken ranks (Phi-3-small).
TOKENIZER_KINDS = ("sentencepiece", "hf", "tiktoken")


def data_source(
    globs: str, fmt: str = "jsonl", text_field: str = "text"
) -> ml_collections.ConfigDict:
    """One named source of `data.sources` (the recipes in configs/ name theirs)."""
    s = ml_collections.ConfigDict()
    # Comma-separated globs (or paths) of the source's shards; "" = not set yet (a full-size
    # recipe names its sources, the run sets where their shards are).
    s.globs = globs
    # One of DATA_FORMATS.
    s.format = fmt
    # JSON field / parquet column holding the document text (unused for arrayrecord_*).
    s.text_field = text_field
    return s


def default_data_config() -> ml_collections.ConfigDict:
    """The input pipeline: sources, the two mixing phases, packing, workers, bad input, eval."""
    d = ml_collections.ConfigDict()
    d.tokenizer = ml_collections.ConfigDict()
    # One of TOKENIZER_KINDS: sentencepiece (a .model; Phi-3's specials added after its pieces),
    # hf (a Hugging Face tokenizer directory or tokenizer.json), tiktoken (a ranks file).
    d.tokenizer.kind = "sentencepiece"
    # Its file or directory; sentencepiece reads the tokenizer.json beside the .model if there.
    d.tokenizer.path = "data/tokenizer.model"
    # Named sources (name -> `data_source`); the recipe (configs/base.py) names them.
    d.sources = ml_collections.ConfigDict()
    # Phase 1 mixture, source name -> weight; the recipe's.
    d.phase1 = ml_collections.ConfigDict()
    # Phase 2 mixture; empty for one phase.
    d.phase2 = ml_collections.ConfigDict()
    # Index of the first batch (train step, counted from 0) drawn from phase 2.
    d.phase2_start_step = 0
    # first_fit (grain's first-fit bins, padded) or concat_split (no padding, splits documents).
    d.packing = "first_fit"
    # First-fit: rows packed at once (more: less padding, documents reordered further).
    d.packing_bins = 16
    # grain worker processes per phase (0: everything in the training process, for debugging).
    d.num_workers = 2
    # Batches buffered per worker.
    d.prefetch = 2
    # raise: a bad shard/record is an error naming file and record; skip: dropped and counted.
    d.on_bad_record = "raise"
    # Fraction of each source held out for evaluation, chosen by document hash.
    d.eval_fraction = 0.01
    # Batches per evaluation of each source (the same held-out batches every time).
    d.eval_batches = 4
    # Seeds the per-epoch shard order and first-fit's row order.
    d.seed = 0
    # Start each document with BOS (it always ends with EOS).
    d.add_bos = True
    # The long-document bucket (phi3_jax.data.long_context, the "mixed context window"; needs
    # first_fit packing).
    d.long_context = ml_collections.ConfigDict()
    # Documents of at least this many ids are kept whole up to the row, the others cut at the
    # model's original_max_position_embeddings (which this must exceed); 0: off.
    d.long_context.min_tokens = 0
    # The fraction of rows packed from the long documents.
    d.long_context.long_fraction = 0.5
    return d


def _validate_mixture(data: ml_collections.ConfigDict, phase: str) -> None:
    for name, weight in data[phase].items():
        if name not in data.sources:
            fail(f"data.{phase}.{name}", weight, "no such source in data.sources")
        if not (isinstance(weight, int | float) and weight > 0):
            fail(f"data.{phase}.{name}", weight, "a mixing weight must be positive")


def validate_data(data: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid data key."""
    if data.tokenizer.kind not in TOKENIZER_KINDS:
        fail("data.tokenizer.kind", data.tokenizer.kind, f"must be one of {TOKENIZER_KINDS}")
    if not data.tokenizer.path:
        fail("data.tokenizer.path", data.tokenizer.path, "must name the tokenizer's file")
    for name, source in data.sources.items():
        if source.globs and not [g for g in source.globs.split(",") if g]:
            fail(f"data.sources.{name}.globs", source.globs, "needs at least one glob")
        if source.format not in DATA_FORMATS:
            fail(f"data.sources.{name}.format", source.format, f"must be one of {DATA_FORMATS}")
        if not source.text_field:
            fail(f"data.sources.{name}.text_field", source.text_field, "must be non-empty")
    _validate_mixture(data, "phase1")
    _validate_mixture(data, "phase2")
    for key, low in (
        ("phase2_start_step", 0),
        ("packing_bins", 1),
        ("num_workers", 0),
        ("prefetch", 1),
        ("eval_batches", 1),
    ):
        if not isinstance(data[key], int) or data[key] < low:
            fail(f"data.{key}", data[key], f"must be an integer >= {low}")
    if data.packing not in PACKINGS:
        fail("data.packing", data.packing, f"must be one of {PACKINGS}")
    if data.on_bad_record not in ON_BAD_RECORD:
        fail("data.on_bad_record", data.on_bad_record, f"must be one of {ON_BAD_RECORD}")
    if not 0 <= data.eval_fraction < 1:
        fail("data.eval_fraction", data.eval_fraction, "must lie in [0, 1)")


def require_training_data(data: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the key to set when the run has nothing to train on: no phase-1
    source, or a mixed source whose shards are not set (a full-size recipe leaves them to the run)."""
    if not data.phase1:
        fail("data.phase1", dict(data.phase1), "phase 1 needs at least one source")
    for phase in ("phase1", "phase2"):
        for name in data[phase]:
            if not data.sources[name].globs:
                fail(
                    f"data.sources.{name}.globs",
                    "",
                    f"not set; point --config.data.sources.{name}.globs at the shards to train on "
                    "(phi3_jax.data.prepare and phi3_jax.data.synthetic write them)",
                )
