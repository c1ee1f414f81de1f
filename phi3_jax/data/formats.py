"""Bytes → records: the one reading layer of JSON-lines shards (plain, .gz, .zst).

prepare's datatrove readers (`data/readers.py`) and training's grain sources
(`data/shard_records.py`) both read through it:

- `jsonl_lines(path)` yields each non-blank line with its record number (its 0-based line index;
  blank lines are counted, not yielded). The file is decompressed by its suffix, chunk by chunk
  (a bounded amount of memory per open file), concatenated frames/members included. A compressed
  stream cut short (gzip's and zstd's stream readers end quietly inside a frame) or a file that
  cannot be read is one `Bad` ending the file, after every record before the cut: the one
  truncation check.
- `json_object`, `text_value` and `fields_value` make a line or a value into a record, or into a
  `Bad` that says what is wrong with it (its `reason`) under a short `kind` (prepare counts bad
  records per kind).

A consumer adds the file and record number to a `Bad`, then raises `errors.BadInputError` or,
with `on_bad_record=skip` (`config.ON_BAD_RECORD`), drops and counts it.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import zstandard

from phi3_jax import paths

# Compressed bytes read at a time: bounds memory per open file, whatever the file's size.
CHUNK_BYTES = 1 << 20
# What reading a damaged or vanished file raises, in any of the formats.
READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError, pa.ArrowException)


@dataclasses.dataclass(frozen=True)
class Bad:
    """Why a record is unusable; `ends_shard`: nothing from here to the end of the file is.

    `reason` says it in words ("invalid UTF-8 at byte 3"); `kind` is its short name, a counter
    key ("invalid_utf8")."""

    reason: str
    ends_shard: bool = False
    kind: str = "invalid_record"


def _decompressed(raw: BinaryIO, new_decompressor: Callable[[], Any]) -> Iterator[bytes]:
    """A (multi-frame/member) compressed stream's bytes, chunk by chunk; EOFError if cut short."""
    decompressor, fed = new_decompressor(), False
    while chunk := raw.read(CHUNK_BYTES):
        while chunk:
            fed = True
            yield decompressor.decompress(chunk)
            if decompressor.eof:
                # Concatenated frames/members: the rest belongs to the next one.
                chunk, decompressor, fed = decompressor.unused_data, new_decompressor(), False
            else:
                chunk = b""
    # The stream readers return a truncated frame's prefix without complaint, hence eof.
    if fed and not decompressor.eof:
        raise EOFError("compressed stream ends before its end marker (truncated file)")


def _raw(raw: BinaryIO) -> Iterator[bytes]:
    while chunk := raw.read(CHUNK_BYTES):
        yield chunk


def file_chunks(raw: BinaryIO, name: str) -> Iterator[bytes]:
    """The decompressed bytes of an open file, by its name's suffix (.zst, .gz or none)."""
    if name.endswith(".zst"):
        return _decompressed(raw, lambda: zstandard.ZstdDecompressor().decompressobj())
    if name.endswith(".gz"):
        return _decompressed(raw, lambda: zlib.decompressobj(wbits=31))
    return _raw(raw)


def split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Newline-separated lines of a byte stream given in chunks (no newline kept). A line spanning
    many chunks is joined once (linear time, however long the line)."""
    pieces: list[bytes] = []
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if len(lines) > 1:
            lines[0] = b"".join([*pieces, lines[0]])
            pieces = []
            yield from lines[:-1]
        pieces.append(lines[-1])
    tail = b"".join(pieces)
    if tail:
        yield tail


def _open_binary(path: str) -> BinaryIO:
    return paths.path(path).open("rb")


def jsonl_lines(
    path: str, start: int = 0, open_binary: Callable[[str], BinaryIO] = _open_binary
) -> Iterator[tuple[int, bytes | Bad]]:
    """(record number, line) of each non-blank line of a JSON-lines file from record `start` on;
    a read that fails (a truncated stream, a file that is gone) yields one final
    (its record number, `Bad`, ends_shard) after the records read before it."""

    def lines() -> Iterator[bytes]:
        with open_binary(path) as raw:
            yield from split_lines(file_chunks(raw, path))

    stream = lines()
    index = 0
    while True:
        # Only the read is guarded: a generator closed at its yield must not run an except clause.
        try:
            line = next(stream)
        except StopIteration:
            return
        except READ_ERRORS as e:
            yield index, Bad(f"unreadable: {e}", ends_shard=True, kind="truncated_file")
            return
        if index >= start and line.strip():
            yield index, line
        index += 1


def _lone_surrogate(obj: dict) -> str | None:
    """The first field holding a lone surrogate (JSON escapes can spell one; no text encoding
    can), or None."""
    for field, value in obj.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            return f"field {field!r} at character {e.start}"
    return None


def json_object(line: bytes) -> dict | Bad:
    """The JSON object of one line, or a `Bad`: not UTF-8, not JSON, not an object, or holding a
    lone surrogate."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Bad(f"invalid UTF-8 at byte {e.start}", kind="invalid_utf8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Bad(f"invalid JSON: {e.msg}", kind="invalid_json")
    if not isinstance(obj, dict):
        return Bad(f"not a JSON object: {type(obj).__name__}", kind="invalid_json")
    # Raw UTF-8 cannot hold a surrogate: only a \u escape can.
    if b"\\u" in line and (where := _lone_surrogate(obj)):
        return Bad(f"invalid Unicode in {where}", kind="invalid_unicode")
    return obj


def text_value(value: Any, what: str) -> str | Bad:
    """A record's text, or a `Bad`: null, not a string, or blank. `what` names where the value
    came from ("field 'text'")."""
    if value is None:
        return Bad(f"{what} is null", kind="empty_text")
    if not isinstance(value, str):
        return Bad(f"{what} is {type(value).__name__} {value!r:.60}", kind="text_not_a_string")
    if not value.strip():
        return Bad(f"{what} is empty", kind="empty_text")
    return value


def record_text(obj: dict, field: str) -> str | Bad:
    """`text_value` of a record's `field`; a `Bad` if it has no such field."""
    if field not in obj:
        return Bad(f"no field {field!r}", kind="missing_text")
    return text_value(obj[field], f"field {field!r}")


def json_text(line: bytes, field: str) -> str | Bad:
    """The text of a JSON-lines record (`record_text`)."""
    obj = json_object(line)
    return obj if isinstance(obj, Bad) else record_text(obj, field)


def fields_value(obj: dict, fields: tuple[str, ...]) -> dict | Bad:
    """{field: JSON value} of a record's `fields`, or a `Bad` naming the first one missing."""
    for field in fields:
        if obj.get(field) is None:
            return Bad(f"no field {field!r}", kind="missing_field")
    return {f: obj[f] for f in fields}


def json_fields(line: bytes, fields: tuple[str, ...]) -> dict | Bad:
    """`fields_value` of a JSON-lines record."""
    obj = json_object(line)
    return obj if isinstance(obj, Bad) else fields_value(obj, fields)


def missing_column(column: str, columns: list[str]) -> Bad:
    """A table (parquet) without the column its records are read from: the whole file is bad."""
    return Bad(
        f"no column {column!r} (columns: {', '.join(columns)})",
        ends_shard=True,
        kind="missing_column",
    )
