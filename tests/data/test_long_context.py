"""The long-context data path (phi3_jax.data.long_context): long documents kept whole in rows of
their own, short rows cut at the original context, mixed by weight; a schedule of row lengths;
bitwise resume across the length switches; the segments' arithmetic and the config checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from shard_fixtures import make_tokenizer, token_bytes, write_arrayrecord

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax.data import long_context, pipeline
from phi3_jax.data.shard_records import SourceSpec
from phi3_jax.data.sources import ReadOptions, ShardSource, counters
from phi3_jax.errors import BadInputError

SHORT_LEN, MIN_TOKENS, SEQ_LEN = 16, 40, 64
SCHEDULE = ((0, 16), (3, 32), (6, 64))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


def document_length(index: int) -> int:
    """Ids per document (EOS framing adds one): long ones (40..63 ids) among short ones (3..35)."""
    return 40 + index % 24 if index % 3 == 0 else 3 + (index * 7) % 33


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """Pre-tokenized documents, each filled with one id (10 + its index), in two shards."""
    root = str(tmp_path_factory.mktemp("long"))
    for shard in range(2):
        docs = range(shard * 60, (shard + 1) * 60)
        write_arrayrecord(
            os.path.join(root, f"docs-{shard}.arrayrecord"),
            [token_bytes([10 + i] * (document_length(i) - 1)) for i in docs],
        )
    return root


def options(corpus: str, **overrides) -> pipeline.PipelineOptions:
    spec = SourceSpec(
        "docs", (os.path.join(corpus, "docs-*.arrayrecord"),), format="arrayrecord_tokens"
    )
    base = dict(
        sources={"docs": spec},
        phase1={"docs": 1.0},
        phase2={},
        phase2_start_step=0,
        seq_len=SEQ_LEN,
        batch_size=4,
        packing_bins=4,
        add_bos=False,
        long_min_tokens=MIN_TOKENS,
        long_fraction=0.5,
        short_len=SHORT_LEN,
    )
    return pipeline.PipelineOptions(**{**base, **overrides})


def pieces(row: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """(document index, tokens) of each document piece in a packed row."""
    out = []
    for segment in np.unique(row["segment_ids"][row["segment_ids"] > 0]):
        tokens = row["tokens"][row["segment_ids"] == segment]
        out.append((int(tokens[0]) - 10, len(tokens)))
    return out


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(n)]


def test_long_documents_stay_whole_and_short_rows_stay_within_the_short_context(corpus, tokenizer):
    batches = take(iter(pipeline.train_dataset(options(corpus), tokenizer)), 12)
    long_rows = short_rows = 0
    for batch in batches:
        for r in range(len(batch["tokens"])):
            row = {k: v[r] for k, v in batch.items()}
            found = pieces(row)
            if any(document_length(d) >= MIN_TOKENS for d, _ in found):
                long_rows += 1
                # Long documents only, each whole: all its ids but the last (the next-token shift).
                assert all(n == document_length(d) - 1 for d, n in found), found
                assert row["positions"].max() + 1 > SHORT_LEN
            else:
                short_rows += 1
                assert all(n <= SHORT_LEN for _, n in found), found
                assert row["positions"].max() < SHORT_LEN
    # Half the rows from each bucket (grain's deterministic mixing of the two row streams).
    assert long_rows == short_rows == 24


def test_schedule_switches_row_length_and_resumes_bitwise(corpus, tokenizer):
    opts = options(corpus, context_schedule=SCHEDULE, phase2={"docs": 1.0}, phase2_start_step=5)
    expected = take(iter(pipeline.train_dataset(opts, tokenizer)), 9)
    assert [b["tokens"].shape[1] for b in expected] == [16] * 3 + [32] * 3 + [64] * 3

    for stop in (2, 4, 6, 7):
        first = iter(pipeline.train_dataset(opts, tokenizer))
        head = take(first, stop)
        # The state as a checkpoint holds it (JSON).
        state = json.loads(json.dumps(first.get_state()))
        first.close()
        resumed = iter(pipeline.train_dataset(opts, tokenizer))
        resumed.set_state(state)
        tail = take(resumed, 9 - stop)
        resumed.close()
        for i, (a, b) in enumerate(zip(head + tail, expected, strict=True)):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"stop {stop} batch {i}")
    # The segments: 16 (0-2), 32 (3-4), phase 2 at 32 (5), phase 2 at 64 (6-); the last state
    # was taken inside the fourth.
    assert sorted(state) == ["phase1", "phase2", "phase3", "phase4", "step"]
    assert state["phase4"] is not None


def test_segments_cut_at_phase_two_and_each_schedule_entry():
    got = long_context.segments({"a": 1.0}, {"b": 1.0}, 5, SCHEDULE, SEQ_LEN, seed=7)
    assert [(s.start, dict(s.weights), s.seq_len, s.seed) for s in got] == [
        (0, {"a": 1.0}, 16, 7),
        (3, {"a": 1.0}, 32, 8),
        (5, {"b": 1.0}, 32, 8),
        (6, {"b": 1.0}, 64, 9),
    ]
    # Without a schedule: the two phases as before, at seq_len and the run's seed.
    plain = long_context.segments({"a": 1.0}, {"b": 1.0}, 5, (), SEQ_LEN, seed=7)
    assert [(s.start, s.seq_len, s.seed) for s in plain] == [(0, 64, 7), (5, 64, 7)]
    assert long_context.tokens_through(SCHEDULE, SEQ_LEN, rows=2, steps=7) == 2 * (
        3 * 16 + 3 * 32 + 64
    )
    assert long_context.tokens_through((), SEQ_LEN, rows=2, steps=7) == 2 * 7 * 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.context_schedule": ((1, 32), (4, 64))}, "first steps must start at 0 and rise"),
        ({"train.context_schedule": ((0, 32), (4, 48))}, "the last train.seq_len=64"),
        ({"train.context_schedule": ((0, 30), (4, 64)), "train.loss_chunk": 16}, "length 30"),
        ({"data.long_context.min_tokens": 32}, "must exceed model.original_max_position_emb"),
        (
            {"data.long_context.min_tokens": 40, "data.long_context.long_fraction": 1.0},
            "must lie in (0, 1)",
        ),
        (
            {"data.long_context.min_tokens": 40, "data.packing": "concat_split"},
            "must be first_fit with data.long_context",
        ),
    ],
)
def test_bad_long_context_keys_are_named(overrides, message):
    config = phi3_tiny.get_config()
    config.train.seq_len = SEQ_LEN
    config.model.original_max_position_embeddings = 32
    for key, value in overrides.items():
        section, *rest = key.split(".")
        target = config[section]
        for name in rest[:-1]:
            target = target[name]
        target[rest[-1]] = value
    with pytest.raises(
        config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        config_lib.validate(config)


def test_a_bucket_no_document_falls_into_is_an_error_not_an_endless_read(corpus, tokenizer):
    # Every document has fewer than 64 ids: the long bucket's reading ends an epoch with none.
    dataset = pipeline.train_dataset(options(corpus, long_min_tokens=SEQ_LEN), tokenizer)
    with pytest.raises(BadInputError, match=r"data.long_context.min_tokens=64: the long bucket"):
        next(iter(dataset))


def bucket_reading(corpus: str, tokenizer, long: bool, on_bad: str = "raise") -> ShardSource:
    """One pass of the corpus as the pipeline's bucket of long (or short) documents reads it."""
    spec = options(corpus).sources["docs"]
    keep = long_context.InBucket(MIN_TOKENS, long)
    read = ReadOptions(on_bad=on_bad, repeat=False, keep=keep, reports=long)
    return ShardSource(spec, pipeline.DocumentIds(tokenizer, add_bos=False), read)


def test_the_two_buckets_count_each_document_once(corpus, tokenizer):
    states = []
    for long in (True, False):
        iterator = iter(bucket_reading(corpus, tokenizer, long))
        docs = list(iterator)
        assert all((len(d["ids"]) >= MIN_TOKENS) == long for d in docs)
        states.append(iterator.get_state())
    total = counters(states)["docs"]
    assert total["documents"] == 120
    assert total["tokens"] == sum(document_length(i) for i in range(120))


def test_a_bad_record_is_counted_once_over_the_buckets(tmp_path, tokenizer):
    write_arrayrecord(
        str(tmp_path / "docs-0.arrayrecord"),
        [token_bytes([11] * 50), b"\x01\x02\x03", token_bytes([12] * 5)],  # odd bytes: bad
    )
    states = []
    for long in (True, False):
        iterator = iter(bucket_reading(str(tmp_path), tokenizer, long, on_bad="skip"))
        assert [len(d["ids"]) for d in iterator] == ([51] if long else [6])  # with EOS
        states.append(iterator.get_state())
    total = counters(states)["docs"]
    assert (total["documents"], total["tokens"], total["bad_records"]) == (2, 57, 1)
    with pytest.raises(BadInputError, match="docs-0.arrayrecord: record 1"):
        list(bucket_reading(str(tmp_path), tokenizer, long=False))  # raised by either reading


def test_pipeline_counters_with_buckets_count_what_the_rows_hold(corpus, tokenizer):
    opts = options(corpus)
    iterator = iter(pipeline.train_dataset(opts, tokenizer))
    held = sum(int((b["segment_ids"] > 0).sum()) for b in take(iterator, 12))
    counted = pipeline.source_counters(iterator)["docs"]
    # A document of n ids gives n - 1 next-token pairs. Counted as of each bucket's last packed
    # group, the counters trail the rows by at most a group of each (both buckets counting every
    # document they read gave 5,375 pairs, twice what the 2,650 of these rows hold).
    pairs = counted["tokens"] - counted["documents"]
    assert held - 2 * opts.packing_bins * SEQ_LEN <= pairs <= held
