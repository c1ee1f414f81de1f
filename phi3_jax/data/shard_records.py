"""One shard's records, by the source's format, from any record on (grain's sources resume there).

Formats: jsonl (plain, .gz or .zst; through `formats`) with a text field; parquet with a text
column, read one row group at a time; ArrayRecord holding UTF-8 text or pre-tokenized int32 ids.
With `fields` (post-training data: chat messages, preference pairs) a jsonl or parquet record
gives those fields' JSON values as a dict instead of a text. A record that cannot be used is a
`formats.Bad` in its place; a file that cannot be read is one that ends the shard.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from array_record.python.array_record_module import ArrayRecordReader

from phi3_jax import paths
from phi3_jax.config import DATA_FORMATS
from phi3_jax.data import formats
from phi3_jax.data.formats import Bad

# ArrayRecord records fetched per read call.
_ARRAY_RECORD_BATCH = 256


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One named source: the globs of its shards, their format and the text field/column."""

    name: str
    globs: tuple[str, ...]
    format: str = "jsonl"
    text_field: str = "text"
    # jsonl/parquet: read these fields as a {field: JSON value} dict instead of text_field's text.
    fields: tuple[str, ...] = ()


def _jsonl_records(
    path: str, value: Callable[[bytes], Any], start: int
) -> Iterator[tuple[int, Any]]:
    for index, line in formats.jsonl_lines(path, start):
        yield index, line if isinstance(line, Bad) else value(line)


def _parquet_records(
    path: str, columns: tuple[str, ...], value: Callable[[dict], Any], start: int
) -> Iterator[tuple[int, Any]]:
    """`value` of each row's {column: value} dict."""
    # Through the path layer (a bucket too); pyarrow reads the footer and row groups by seeks.
    try:
        fh = paths.path(path).open("rb")
    except formats.READ_ERRORS as e:
        yield start, Bad(f"cannot open parquet: {e}", ends_shard=True)
        return
    with fh:
        try:
            pf = pq.ParquetFile(fh)
        except formats.READ_ERRORS as e:
            pf = Bad(f"cannot open parquet: {e}", ends_shard=True)
        if isinstance(pf, Bad):
            yield start, pf
            return
        yield from _parquet_rows(pf, columns, value, start)


def _parquet_rows(
    pf: pq.ParquetFile, columns: tuple[str, ...], value: Callable[[dict], Any], start: int
) -> Iterator[tuple[int, Any]]:
    for field in columns:
        if field not in pf.schema_arrow.names:
            yield start, formats.missing_column(field, pf.schema_arrow.names)
            return
    offset = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if offset + rows > start:
            try:
                table = pf.read_row_group(group, columns=list(columns))
            except formats.READ_ERRORS as e:
                yield max(offset, start), Bad(f"unreadable row group {group}: {e}", ends_shard=True)
                return
            values = table.to_pylist()
            for i in range(max(start - offset, 0), rows):
                yield offset + i, value(values[i])
        offset += rows


def _decode_text(record: bytes) -> str | Bad:
    try:
        return formats.text_value(record.decode("utf-8"), "the record")
    except UnicodeDecodeError as e:
        return Bad(f"invalid UTF-8 at byte {e.start}", kind="invalid_utf8")


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
            fields = functools.partial(formats.json_fields, fields=spec.fields)
            return _jsonl_records(path, fields, start)
        text = functools.partial(formats.json_text, field=spec.text_field)
        return _jsonl_records(path, text, start)
    if spec.format == "parquet":
        if spec.fields:
            value = functools.partial(formats.fields_value, fields=spec.fields)
            return _parquet_records(path, spec.fields, value, start)
        field = spec.text_field
        what = f"field {field!r}"
        return _parquet_records(
            path, (field,), lambda row: formats.text_value(row[field], what), start
        )
    if spec.format == "arrayrecord_text":
        return _arrayrecord_records(path, _decode_text, start)
    if spec.format == "arrayrecord_tokens":
        return _arrayrecord_records(path, _decode_tokens, start)
    raise ValueError(f"source {spec.name}: format {spec.format!r} is not one of {DATA_FORMATS}")
