"""Datatrove readers that never lose a record silently.

datatrove's own readers log a warning and move on when a line is not JSON, a file is cut short or a
record has no text. Here every such case is a bad record: with `on_bad_record="raise"` a
`BadRecordError` names the file and the record; with `"skip"` the record is dropped and counted in
the step's stats as `bad_<reason>` (the manifest reports them). A truncated `.zst` file, which the
zstd stream reader ends silently, is detected by checking that its last frame is complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Literal

import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader

from phi3_jax.data.shards import expand_globs

OnBadRecord = Literal["raise", "skip"]
ON_BAD_RECORD = ("raise", "skip")
# Compressed bytes read at a time from a .zst file.
_CHUNK = 1 << 20


class BadRecordError(ValueError):
    """An input record (or a whole input file) is unusable; the message names file and record."""


class TruncatedFileError(EOFError):
    """A compressed input ends before its last frame does."""


def zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of a (multi-frame) zstd stream; raise TruncatedFileError if it is cut."""
    new = zstandard.ZstdDecompressor().decompressobj
    dec, pending = new(), False
    while chunk := raw.read(_CHUNK):
        while chunk:
            pending = True
            yield dec.decompress(chunk)
            chunk = b""
            if dec.eof:
                chunk, dec, pending = dec.unused_data, new(), False
    if pending:
        raise TruncatedFileError("zstd stream ends inside a frame")


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


class _Policy:
    """Mixin: what a reader does with a bad record."""

    on_bad_record: OnBadRecord

    def bad_record(self, filepath: str, where: str, reason: str, detail: object, count: int = 1):
        if self.on_bad_record == "raise":
            path = self.data_folder.resolve_paths(filepath)
            raise BadRecordError(f"{path}: {where}: {reason}: {detail}")
        self.stat_update(f"bad_{reason}", value=count)


def _not_a_string(field: str, value: object) -> tuple[str, str]:
    """The reason and detail of a text field holding something else than a string."""
    return "text_not_a_string", f"field {field!r} is {type(value).__name__} {value!r:.60}"


def _check_policy(on_bad_record: str) -> None:
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record={on_bad_record!r}: must be one of {ON_BAD_RECORD}")


class StrictJsonlReader(_Policy, JsonlReader):
    """JSON lines (.jsonl, .jsonl.gz, .jsonl.zst); each line one document with a text field."""

    name = "🐿 Jsonl (strict)"

    def __init__(self, *args, on_bad_record: OnBadRecord = "raise", **kwargs):
        _check_policy(on_bad_record)
        super().__init__(*args, **kwargs)
        self.on_bad_record = on_bad_record

    def _lines(self, filepath: str) -> Iterator[bytes]:
        if filepath.endswith(".zst"):
            with self.data_folder.open(filepath, "rb", compression=None) as raw:
                yield from split_lines(zstd_chunks(raw))
        else:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                yield from f

    def _document(self, line: bytes, filepath: str, li: int) -> Document | None:
        import orjson

        where = f"line {li + 1}"
        try:
            data = orjson.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            return self.bad_record(filepath, where, "invalid_utf8", e)
        except orjson.JSONDecodeError as e:
            return self.bad_record(filepath, where, "invalid_json", e)
        if not isinstance(data, dict):
            return self.bad_record(filepath, where, "invalid_json", "not a JSON object")
        text = data.get(self.text_key)
        if text is not None and not isinstance(text, str):
            return self.bad_record(filepath, where, *_not_a_string(self.text_key, text))
        if text is None or not text.strip():
            reason = "missing_text" if text is None else "empty_text"
            return self.bad_record(filepath, where, reason, f"field {self.text_key!r}")
        return self.get_document_from_dict(data, filepath, li)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        li = -1
        try:
            for li, line in enumerate(self._lines(filepath)):
                if not line.strip():
                    continue
                with self.track_time():
                    document = self._document(line, filepath, li)
                if document:
                    yield document
        except (EOFError, zstandard.ZstdError, OSError) as e:
            # Records before the cut were yielded; the rest of the file is lost and counted once.
            self.bad_record(filepath, f"after line {li + 1}", "truncated_file", e)
            return
        if li < 0:
            self.bad_record(filepath, "line 1", "empty_file", "no records")


class StrictParquetReader(_Policy, ParquetReader):
    """Parquet files (e.g. FineWeb's); rows need a non-empty string in the text column."""

    name = "📒 Parquet (strict)"

    def __init__(self, *args, on_bad_record: OnBadRecord = "raise", **kwargs):
        _check_policy(on_bad_record)
        super().__init__(*args, **kwargs)
        self.on_bad_record = on_bad_record

    def read_file(self, filepath: str) -> DocumentsPipeline:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as f:
            try:
                pqf = pq.ParquetFile(f)
            except pa.ArrowException as e:
                self.bad_record(filepath, "file", "unreadable_file", e)
                return
            names = pqf.schema_arrow.names
            rows = pqf.metadata.num_rows
            if self.text_key not in names:
                detail = f"no column {self.text_key!r} (columns: {names})"
                self.bad_record(filepath, f"all {rows} rows", "missing_column", detail, rows)
                return
            if rows == 0:
                self.bad_record(filepath, "row 1", "empty_file", "no rows")
                return
            columns = (
                None
                if self.read_metadata
                else [c for c in (self.text_key, self.id_key) if c in names]
            )
            row = 0
            for batch in pqf.iter_batches(batch_size=self.batch_size, columns=columns):
                for data in batch.to_pylist():
                    text = data.get(self.text_key)
                    if text is not None and not isinstance(text, str):
                        self.bad_record(
                            filepath, f"row {row + 1}", *_not_a_string(self.text_key, text)
                        )
                    elif text is None or not text.strip():
                        self.bad_record(
                            filepath,
                            f"row {row + 1}",
                            "empty_text",
                            f"{self.text_key!r} is {text!r}",
                        )
                    else:
                        yield self.get_document_from_dict(data, filepath, row)
                    row += 1


class StrictWarcReader(_Policy, WarcReader):
    """WARC/WET files (.warc, .warc.gz); HTML responses become documents (extraction comes later).

    warcio reads gzipped WARC member by member and ends quietly at a cut member, so after the last
    record the gzip stream is checked for completeness.
    """

    name = "🕷 Warc (strict)"

    def __init__(self, *args, on_bad_record: OnBadRecord = "raise", **kwargs):
        _check_policy(on_bad_record)
        # warcio detects and decompresses gzip members itself.
        super().__init__(*args, compression=None, **kwargs)
        self.on_bad_record = on_bad_record

    def _gzip_error(self, filepath: str) -> Exception | None:
        try:
            with self.data_folder.open(filepath, "rb", compression="gzip") as f:
                while f.read(_CHUNK):
                    pass
        except (EOFError, OSError) as e:
            return e
        return None

    def read_file(self, filepath: str) -> DocumentsPipeline:
        from warcio.exceptions import ArchiveLoadFailed

        n = 0
        try:
            for document in super().read_file(filepath):
                n += 1
                yield document
        except (ArchiveLoadFailed, EOFError, OSError) as e:
            self.bad_record(filepath, f"after document {n}", "truncated_file", e)
            return
        if filepath.endswith(".gz") and (error := self._gzip_error(filepath)):
            self.bad_record(filepath, f"after document {n}", "truncated_file", error)


def iter_documents(
    patterns: str | Sequence[str], on_bad_record: OnBadRecord = "raise"
) -> DocumentsPipeline:
    """Documents of jsonl(.gz/.zst) files matching comma-separated globs, read outside a pipeline."""
    files = [os.path.abspath(f) for f in expand_globs(patterns)]
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    reader = StrictJsonlReader(root, on_bad_record=on_bad_record)
    yield from reader.read_files_shard([os.path.relpath(f, root) for f in files])
