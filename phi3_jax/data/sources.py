"""Streaming shard sources: documents read shard by shard, with exact resumable state.

A source is a named list of globs over shards of one format: jsonl (plain, .gz or .zst) with a text
field, parquet with a text column (read one row group at a time), or ArrayRecord holding UTF-8 text
or pre-tokenized int32 ids. With `fields` (post-training data: chat messages, preference pairs) a
jsonl or parquet record gives those fields' JSON values as a dict instead of a text. `ShardSource` is a grain `IterDataset` divided among processes
(constructor arguments) and grain workers (`set_slice`, called by `mp_prefetch`): by shard, or by
record index where there are fewer shards than readers, so no two readers share a record. Its
iterator's state is (epoch, shard position, record index) plus per-source counters, all small JSON
values, so a restored iterator re-opens the shard and skips to the record. Bad input raises
`BadInputError` naming file and record, or with `on_bad="skip"` is dropped and counted
(`bad_records`, `bad_shards`); nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import itertools
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from array_record.python.array_record_module import ArrayRecordReader

from phi3_jax.config import DATA_FORMATS, ON_BAD_RECORD

SPLITS = ("train", "eval")
# The keys of a source iterator's state that count what it has read (see `counters`); the
# too_long ones count records longer than a row that `to_ids` dropped or truncated (`Counted`).
COUNTER_KEYS = (
    "documents",
    "tokens",
    "bad_records",
    "bad_shards",
    "too_long_dropped",
    "too_long_truncated",
)
# Compressed bytes read per step: bounds memory per open shard, whatever the shard size.
_CHUNK_BYTES = 1 << 20
# ArrayRecord records fetched per read call.
_ARRAY_RECORD_BATCH = 256


class BadInputError(ValueError):
    """A shard or a record cannot be used; the message names the source, file and record."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One named source: the globs of its shards, their format and the text field/column."""

    name: str
    globs: tuple[str, ...]
    format: str = "jsonl"
    text_field: str = "text"
    # jsonl/parquet: read these fields as a {field: JSON value} dict instead of text_field's text.
    fields: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Counted:
    """What `to_ids` returns for a record it cut (`arrays`) or left out (`arrays` None) on purpose,
    e.g. one longer than a row: counted under `counter` (one of COUNTER_KEYS), not an error."""

    counter: str
    arrays: dict[str, np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Bad:
    """Why a record is unusable; `ends_shard`: nothing from here to the end of the shard is."""

    reason: str
    ends_shard: bool = False


def resolve_shards(spec: SourceSpec) -> tuple[list[str], list[str]]:
    """The source's files in a deterministic order, and a message for each glob/path giving none."""
    files: list[str] = []
    problems: list[str] = []
    for pattern in spec.globs:
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(pattern, recursive=True))
            if not matched:
                problems.append(f"glob {pattern!r} matches no file")
        elif os.path.isfile(pattern):
            matched = [pattern]
        else:
            matched = []
            problems.append(f"{pattern}: missing file")
        files.extend(f for f in matched if f not in files)
    return files, problems


def eval_fraction_of(payload: str | np.ndarray | dict) -> float:
    """A stable pseudo-random number in [0, 1) from the document's content (not Python's hash)."""
    if isinstance(payload, dict):
        payload = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload.tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") / 2.0**64


def _text_value(value: Any) -> str | Bad:
    if not isinstance(value, str):
        return Bad(f"text is {type(value).__name__}, not a string")
    if not value:
        return Bad("empty text")
    return value


# Record readers: they yield (record index, payload or Bad) from record `start` on, streaming.


def _decompressed_chunks(path: str, new_decompressor: Callable[[], Any]) -> Iterator[bytes]:
    """Decompress a (multi-frame/member) file chunk by chunk; a stream cut short is an error."""
    with open(path, "rb") as fh:
        decompressor, fed = new_decompressor(), False
        while chunk := fh.read(_CHUNK_BYTES):
            while chunk:
                fed = True
                yield decompressor.decompress(chunk)
                if decompressor.eof:
                    # Concatenated frames/members: the rest belongs to the next one.
                    chunk, decompressor, fed = decompressor.unused_data, new_decompressor(), False
                else:
                    chunk = b""
        # zstandard's stream readers return a truncated frame's prefix without complaint, hence eof.
        if fed and not decompressor.eof:
            raise EOFError("compressed stream ends before its end marker (truncated file)")


def _raw_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            yield chunk


def _file_chunks(path: str) -> Iterator[bytes]:
    if path.endswith(".zst"):
        return _decompressed_chunks(path, lambda: zstandard.ZstdDecompressor().decompressobj())
    if path.endswith(".gz"):
        return _decompressed_chunks(path, lambda: zlib.decompressobj(wbits=31))
    return _raw_chunks(path)


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    tail = b""
    for chunk in chunks:
        *complete, tail = (tail + chunk).split(b"\n")
        yield from complete
    if tail:
        yield tail


def _json_object(line: bytes) -> dict | Bad:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Bad(f"invalid UTF-8 at byte {e.start}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Bad(f"invalid JSON: {e.msg}")
    return obj if isinstance(obj, dict) else Bad(f"not a JSON object: {type(obj).__name__}")


def _encodable(value: str | Bad, what: str) -> str | Bad:
    try:
        # JSON escapes can spell lone surrogates, which no tokenizer can encode.
        if isinstance(value, str):
            value.encode("utf-8")
    except UnicodeEncodeError as e:
        return Bad(f"invalid Unicode in {what} at character {e.start}")
    return value


def _json_text(line: bytes, field: str) -> str | Bad:
    obj = _json_object(line)
    if isinstance(obj, Bad):
        return obj
    if field not in obj:
        return Bad(f"no field {field!r}")
    return _encodable(_text_value(obj[field]), "the text")


def _fields_value(obj: dict, fields: tuple[str, ...]) -> dict | Bad:
    for field in fields:
        if obj.get(field) is None:
            return Bad(f"no field {field!r}")
        bad = _encodable(json.dumps(obj[field], ensure_ascii=False), f"field {field!r}")
        if isinstance(bad, Bad):
            return bad
    return {f: obj[f] for f in fields}


def _json_fields(line: bytes, fields: tuple[str, ...]) -> dict | Bad:
    obj = _json_object(line)
    return obj if isinstance(obj, Bad) else _fields_value(obj, fields)


_READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException)


def _jsonl_records(
    path: str, value: Callable[[bytes], Any], start: int
) -> Iterator[tuple[int, Any]]:
    lines = _lines(_file_chunks(path))
    for index in itertools.count():
        # Only the read is guarded: a generator closed at its yield must not run an except clause.
        try:
            line = next(lines)
        except StopIteration:
            return
        except _READ_ERRORS as e:
            yield index, Bad(f"unreadable: {e}", ends_shard=True)
            return
        # Blank lines are separators, not records; they still count for the record index.
        if index >= start and line.strip():
            yield index, value(line)


def _parquet_records(
    path: str, columns: tuple[str, ...], value: Callable[[dict], Any], start: int
) -> Iterator[tuple[int, Any]]:
    """`value` of each row's {column: value} dict."""
    try:
        pf = pq.ParquetFile(path)
    except _READ_ERRORS as e:
        yield start, Bad(f"cannot open parquet: {e}", ends_shard=True)
        return
    for field in columns:
        if field not in pf.schema_arrow.names:
            names = ", ".join(pf.schema_arrow.names)
            yield start, Bad(f"no column {field!r} (columns: {names})", ends_shard=True)
            return
    offset = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if offset + rows > start:
            try:
                table = pf.read_row_group(group, columns=list(columns))
            except _READ_ERRORS as e:
                yield max(offset, start), Bad(f"unreadable row group {group}: {e}", ends_shard=True)
                return
            values = table.to_pylist()
            for i in range(max(start - offset, 0), rows):
                yield offset + i, value(values[i])
        offset += rows


def _decode_text(record: bytes) -> str | Bad:
    try:
        return _text_value(record.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Bad(f"invalid UTF-8 at byte {e.start}")


def _decode_tokens(record: bytes) -> np.ndarray | Bad:
    if not record or len(record) % 4:
        return Bad(f"{len(record)} bytes is not a non-empty int32 array")
    return np.frombuffer(record, dtype="<i4").astype(np.int32)


def _arrayrecord_error(reader: ArrayRecordReader) -> str | None:
    """The reader's error, if any: ArrayRecord reports it through ok() and raises it on close()."""
    if reader.ok():
        return None
    try:
        reader.close()
    except RuntimeError as e:
        return str(e)
    return "reader not ok"


def _arrayrecord_records(
    path: str, decode: Callable[[bytes], Any], start: int
) -> Iterator[tuple[int, Any]]:
    reader = ArrayRecordReader(path)
    if error := _arrayrecord_error(reader):
        yield start, Bad(f"cannot open ArrayRecord: {error}", ends_shard=True)
        return
    count = reader.num_records()
    for first in range(start, count, _ARRAY_RECORD_BATCH):
        # Only the read is guarded: a generator closed at its yield must not run an except clause.
        try:
            batch = reader.read(first, min(first + _ARRAY_RECORD_BATCH, count))
        except RuntimeError as e:
            batch = e
        if isinstance(batch, RuntimeError):
            yield first, Bad(f"unreadable: {batch}", ends_shard=True)
            return
        for i, record in enumerate(batch):
            yield first + i, decode(record)
    reader.close()


def read_records(spec: SourceSpec, path: str, start: int = 0) -> Iterator[tuple[int, Any]]:
    """(record index, text | int32 ids | {field: value} | Bad) of one shard from record `start`,
    streamed."""
    if spec.fields and spec.format not in ("jsonl", "parquet"):
        raise ValueError(f"source {spec.name}: fields {spec.fields} need jsonl or parquet shards")
    if spec.format == "jsonl":
        if spec.fields:
            return _jsonl_records(path, functools.partial(_json_fields, fields=spec.fields), start)
        return _jsonl_records(path, functools.partial(_json_text, field=spec.text_field), start)
    if spec.format == "parquet":
        if spec.fields:
            value = functools.partial(_fields_value, fields=spec.fields)
            return _parquet_records(path, spec.fields, value, start)
        field = spec.text_field
        return _parquet_records(path, (field,), lambda row: _text_value(row[field]), start)
    if spec.format == "arrayrecord_text":
        return _arrayrecord_records(path, _decode_text, start)
    if spec.format == "arrayrecord_tokens":
        return _arrayrecord_records(path, _decode_tokens, start)
    raise ValueError(f"source {spec.name}: format {spec.format!r} is not one of {DATA_FORMATS}")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How a source is read: split, error policy, repetition and file-order seed."""

    # raise: the first bad record/shard is an error; skip: it is dropped and counted.
    on_bad: str = "raise"
    # train: documents outside the held-out split; eval: only the held-out ones.
    split: str = "train"
    # Fraction of documents held out for evaluation (by content hash), 0 for none.
    eval_fraction: float = 0.0
    # Loop over the shards forever (training) or stop after one pass.
    repeat: bool = True
    # Seeds the per-epoch shard order.
    seed: int = 0


def divide(
    files: list[str], stride: tuple[int, int], index: int, count: int
) -> tuple[list[str], tuple[int, int]]:
    """Reader `index` of `count` takes its part of (files, record stride (r, n): records i with
    i % n == r): whole shards while there are at least as many as readers, else every count-th
    record of the shards it shares."""
    r, n = stride
    if n == 1 and len(files) >= count:
        return files[index::count], stride
    return files, (r + n * index, n * count)


# What a source's `to_ids` makes of a payload (see ShardSource).
ToIdsResult = np.ndarray | dict[str, np.ndarray] | Bad | Counted


class ShardSource(grain.IterDataset):
    """Documents of one source as `{"ids": int32 array}`, `to_ids` applied to each payload.

    `to_ids` may also return a dict of arrays holding "ids" (the document as it is), a `Bad` (the
    record is unusable: raised or skipped as `options.on_bad` says) or a `Counted`.

    Divided first among processes (the constructor's), then among grain workers (`set_slice`):
    by shard while there are enough shards, else by record index within the shared shards.
    """

    def __init__(
        self,
        spec: SourceSpec,
        to_ids: Callable[[Any], ToIdsResult],
        options: ReadOptions = ReadOptions(),
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__()
        if options.on_bad not in ON_BAD_RECORD or options.split not in SPLITS:
            raise ValueError(f"source {spec.name}: invalid {options}")
        files, problems = resolve_shards(spec)
        for problem in problems:
            if options.on_bad == "raise":
                raise BadInputError(f"source {spec.name}: {problem}")
            logging.warning("source %s: skipping %s", spec.name, problem)
        if not files:
            raise BadInputError(f"source {spec.name}: no shard in {list(spec.globs)}")
        self._spec = spec
        self._to_ids = to_ids
        self._options = options
        self._files, self._stride = divide(files, (0, 1), process_index, process_count)
        self._missing = len(problems)
        self._worker = (0, 1)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's hook dividing a source among `mp_prefetch` workers (`slice(w, None, W)`)."""
        del sequential_slice  # Each worker keeps its shards' order either way.
        self._worker = (sl.start or 0, sl.step or 1)

    def __iter__(self) -> grain.DatasetIterator:
        files, stride = divide(self._files, self._stride, *self._worker)
        # Each process reports the globs/paths that gave no shard once, from its first worker.
        missing = self._missing if self._worker[0] == 0 else 0
        return _ShardSourceIterator(self._spec, files, stride, self._to_ids, self._options, missing)

    def __str__(self) -> str:
        return f"ShardSource({self._spec.name}, {len(self._files)} shards)"


class _ShardSourceIterator(grain.DatasetIterator):
    def __init__(
        self,
        spec: SourceSpec,
        files: list[str],
        stride: tuple[int, int],
        to_ids: Callable[[Any], ToIdsResult],
        options: ReadOptions,
        missing_shards: int,
    ):
        super().__init__()
        self._spec = spec
        self._files = files
        self._stride = stride
        self._to_ids = to_ids
        self._options = options
        self._state = {
            "source": spec.name,
            "epoch": 0,
            "shard": 0,
            "record": 0,
            # Documents at the start of this epoch: an epoch that adds none would loop forever.
            "epoch_start_documents": 0,
            **dict.fromkeys(COUNTER_KEYS, 0),
            "bad_shards": missing_shards,
        }
        self._records: Iterator[tuple[int, Any]] | None = None
        self._path = ""
        self._shard_has_records = False

    def _open_shard(self) -> bool:
        """Open the shard at the state's position; False at the end of a single pass."""
        state = self._state
        if state["shard"] == len(self._files):
            if not self._options.repeat:
                return False
            if state["documents"] == state["epoch_start_documents"]:
                raise BadInputError(
                    f"source {self._spec.name}: no usable {self._options.split} document in "
                    f"{self._files}"
                )
            state.update(
                epoch=state["epoch"] + 1, shard=0, epoch_start_documents=state["documents"]
            )
        order = np.random.default_rng([self._options.seed, state["epoch"]])
        self._path = self._files[order.permutation(len(self._files))[state["shard"]]]
        self._records = read_records(self._spec, self._path, state["record"])
        self._shard_has_records = state["record"] > 0
        return True

    def _bad(self, index: int, bad: Bad) -> None:
        if bad.ends_shard:
            message = f"{self._path}: {bad.reason} (at record {index})"
        else:
            message = f"{self._path}: record {index}: {bad.reason}"
        if self._options.on_bad == "raise":
            raise BadInputError(f"source {self._spec.name}: {message}")
        logging.warning("source %s: skipping %s", self._spec.name, message)
        self._state["bad_shards" if bad.ends_shard else "bad_records"] += 1

    def _in_split(self, payload: str | np.ndarray) -> bool:
        if not self._options.eval_fraction:
            return self._options.split == "train"
        held_out = eval_fraction_of(payload) < self._options.eval_fraction
        return held_out == (self._options.split == "eval")

    def __next__(self) -> dict[str, np.ndarray]:
        state = self._state
        while True:
            if self._records is None and not self._open_shard():
                raise StopIteration
            item = next(self._records, None)
            # A shared shard's own problems are reported by the first of its readers only.
            first_reader = self._stride[0] == 0
            if item is None:
                if not self._shard_has_records and first_reader:
                    self._bad(0, Bad("empty shard: no records", ends_shard=True))
                self._records = None
                state.update(shard=state["shard"] + 1, record=0)
                continue
            index, payload = item
            self._shard_has_records = True
            state["record"] = index + 1
            mine = index % self._stride[1] == self._stride[0]
            if isinstance(payload, Bad):
                reports_it = first_reader if payload.ends_shard else mine
                if reports_it:
                    self._bad(index, payload)
            elif mine and self._in_split(payload):
                example = self._example(index, self._to_ids(payload))
                if example is not None:
                    state["documents"] += 1
                    state["tokens"] += len(example["ids"])
                    return example

    def _example(self, index: int, result: ToIdsResult) -> dict[str, np.ndarray] | None:
        """The document `to_ids` made of record `index`, None if it left the record out."""
        if isinstance(result, Bad):
            self._bad(index, result)
            return None
        if isinstance(result, Counted):
            self._state[result.counter] = self._state.get(result.counter, 0) + 1
            result = result.arrays
        return {"ids": result} if isinstance(result, np.ndarray) else result

    def get_state(self) -> dict[str, Any]:
        return dict(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        if state["source"] != self._spec.name:
            raise ValueError(f"state of source {state['source']} given to {self._spec.name}")
        self._state = dict(state)
        self._records = None

    def __str__(self) -> str:
        return f"ShardSourceIterator({self._spec.name}, {len(self._files)} shards)"


def counters(state: Any) -> dict[str, dict[str, int]]:
    """Per-source counters summed over every reader found in an iterator state tree."""
    totals: dict[str, dict[str, int]] = {}
    stack = [state]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and "source" in node and "epoch_start_documents" in node:
            total = totals.setdefault(node["source"], dict.fromkeys(COUNTER_KEYS, 0))
            for key in COUNTER_KEYS:
                # States saved before a counter existed lack it.
                total[key] += node.get(key, 0)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return totals
