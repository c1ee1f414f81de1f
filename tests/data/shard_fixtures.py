"""Small shards of every supported format, and a tiny sentencepiece tokenizer, for the data tests."""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from array_record.python.array_record_module import ArrayRecordWriter

from phi3_jax import config as config_lib
from phi3_jax.data.sentencepiece_tokenizer import train_sentencepiece, write_sentencepiece_json
from phi3_jax.data.tokenizer import load_tokenizer

WORDS = (
    "the of and a to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like"
).split()


def doc_text(source: str, index: int, rng: random.Random, max_words: int = 40) -> str:
    """A document that names its source and index (so tests can tell documents apart)."""
    body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
    return f"{source} {index} {body}"


def texts(source: str, count: int, seed: int = 0, max_words: int = 40) -> list[str]:
    rng = random.Random(f"{source}-{seed}")
    return [doc_text(source, i, rng, max_words) for i in range(count)]


def jsonl_bytes(records: Sequence[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write_jsonl(path: str, records: Sequence[dict]) -> str:
    """Plain, .gz or .zst by the path's suffix."""
    data = jsonl_bytes(records)
    if path.endswith(".gz"):
        data = gzip.compress(data)
    elif path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def write_parquet(path: str, table: dict[str, list], row_group_size: int) -> str:
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)
    return path


def write_arrayrecord(path: str, records: Sequence[bytes]) -> str:
    writer = ArrayRecordWriter(path, "group_size:4")
    for record in records:
        writer.write(record)
    writer.close()
    return path


def write_source(
    directory: str, source: str, shards: int, per_shard: int, max_words: int = 40
) -> list[str]:
    """`shards` jsonl.zst shards of `per_shard` documents each; returns all texts in shard order."""
    os.makedirs(directory, exist_ok=True)
    all_texts = texts(source, shards * per_shard, max_words=max_words)
    for s in range(shards):
        chunk = all_texts[s * per_shard : (s + 1) * per_shard]
        write_jsonl(
            os.path.join(directory, f"{source}-{s:03d}.jsonl.zst"), [{"text": t} for t in chunk]
        )
    return all_texts


def tokenizer_config(kind: str, path: str):
    """The default run config with `data.tokenizer` set to (kind, path)."""
    config = config_lib.default_config()
    config.data.tokenizer.update(kind=kind, path=path)
    return config


def make_tokenizer(directory: str):
    """A 320-piece BPE over the test vocabulary (plus the Phi-3 specials), with its tokenizer.json."""
    sentences = texts("web", 500, seed=1) + texts("synthetic", 500, seed=1) + texts("code", 500)
    path = train_sentencepiece(iter(sentences), 320, os.path.join(directory, "sp"))
    write_sentencepiece_json(path)
    return load_tokenizer(tokenizer_config("sentencepiece", path))


def bundled_texts(count: int) -> list[str]:
    """The first `count` documents of the bundled corpus (Python's documentation)."""
    with open("data/raw/stdlib.jsonl.zst", "rb") as f:
        lines = zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines()
    return [json.loads(line)["text"] for line in lines[:count]]


def token_bytes(ids: Sequence[int]) -> bytes:
    return np.asarray(ids, dtype="<i4").tobytes()
