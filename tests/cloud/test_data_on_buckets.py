"""Data shards on emulated buckets: the grain pipeline reading jsonl.zst and parquet shards from
gs:// and s3:// gives the batches it gives reading the same shards from local disk; ArrayRecord
shards on a bucket are refused in one line (array_record's reader opens local files only)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from phi3_jax import paths
from phi3_jax.data import pipeline
from phi3_jax.data.shard_records import SourceSpec
from phi3_jax.data.sources import ReadOptions, ShardSource
from phi3_jax.errors import BadInputError
from tests.data.shard_fixtures import (
    make_tokenizer,
    texts,
    write_arrayrecord,
    write_parquet,
    write_source,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("shards"))
    write_source(root, "web", shards=3, per_shard=40, max_words=50)
    table = {"text": texts("synthetic", 90, max_words=50)}
    for s in range(2):
        part = {"text": table["text"][s * 45 : (s + 1) * 45]}
        write_parquet(os.path.join(root, f"synthetic-{s}.parquet"), part, row_group_size=10)
    return root


def _upload(local: str, remote: str) -> None:
    for name in sorted(os.listdir(local)):
        with open(os.path.join(local, name), "rb") as f:
            paths.path(paths.join(remote, name)).write_bytes(f.read())


def _options(root: str) -> pipeline.PipelineOptions:
    return pipeline.PipelineOptions(
        sources={
            "web": SourceSpec("web", (paths.join(root, "web-*.jsonl.zst"),)),
            "synthetic": SourceSpec(
                "synthetic", (paths.join(root, "synthetic-*.parquet"),), format="parquet"
            ),
        },
        phase1={"web": 0.5, "synthetic": 0.5},
        phase2={},
        phase2_start_step=0,
        seq_len=32,
        batch_size=2,
        packing_bins=4,
    )


def _batches(root: str, tokenizer, n: int = 12) -> list[dict[str, np.ndarray]]:
    iterator = iter(pipeline.train_dataset(_options(root), tokenizer))
    return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(n)]


def test_shards_on_a_bucket_give_the_local_batches(bucket, local_shards, tokenizer):
    remote = paths.join(bucket, "shards")
    _upload(local_shards, remote)
    expected, got = _batches(local_shards, tokenizer), _batches(remote, tokenizer)
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {i} {key}")


def test_arrayrecord_shards_on_a_bucket_are_refused(gcs, tmp_path):
    local = write_arrayrecord(str(tmp_path / "text-0.array_record"), [b"one", b"two"])
    remote = paths.join(gcs.create_bucket(), "text-0.array_record")
    paths.path(remote).write_bytes(open(local, "rb").read())
    spec = SourceSpec("ar", (remote,), format="arrayrecord_text")
    with pytest.raises(BadInputError, match=r"^source ar: gs://.*: ArrayRecord shards are read"):
        ShardSource(spec, to_ids=lambda x: x, options=ReadOptions())
