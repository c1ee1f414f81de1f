"""Datatrove readers that never lose a record silently.

datatrove's own readers log a warning and move on when a line is not JSON, a file is cut short or a
record has no text. Here every such case is a bad record, found by the one format layer
(`data/formats.py`, shared with training's grain sources): with `on_bad_record="raise"` an
`errors.BadInputError` names the file and the record; with `"skip"` the record is dropped and
counted in the step's stats as `bad_<kind>` (the manifest reports them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader

from phi3_jax import paths
from phi3_jax.config import ON_BAD_RECORD
from phi3_jax.data import formats
from phi3_jax.data.formats import Bad
from phi3_jax.data.shards import expand_globs
from phi3_jax.errors import BadInputError


class _Policy:
    """Mixin: what a reader does with a bad record (`on_bad_record`, checked at construction)."""

    on_bad_record: str

    def set_policy(self, on_bad_record: str) -> None:
        if on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"on_bad_record={on_bad_record!r}: must be one of {ON_BAD_RECORD}")
        self.on_bad_record = on_bad_record

    def bad_record(self, filepath: str, where: str, bad: Bad, count: int = 1) -> None:
        if self.on_bad_record == "raise":
            path = self.data_folder.resolve_paths(filepath)
            raise BadInputError(f"{path}: {where}: {bad.kind}: {bad.reason}")
        self.stat_update(f"bad_{bad.kind}", value=count)


class StrictJsonlReader(_Policy, JsonlReader):
    """JSON lines (.jsonl, .jsonl.gz, .jsonl.zst); each line one document with a text field."""

    name = "🐿 Jsonl (strict)"

    def __init__(self, *args, on_bad_record: str = "raise", **kwargs):
        self.set_policy(on_bad_record)
        super().__init__(*args, **kwargs)

    def _document(self, line: bytes, filepath: str, index: int) -> Document | None:
        obj = formats.json_object(line)
        text = obj if isinstance(obj, Bad) else formats.record_text(obj, self.text_key)
        if isinstance(text, Bad):
            return self.bad_record(filepath, f"line {index + 1}", text)
        return self.get_document_from_dict(obj, filepath, index)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        # Decompressed by formats (the one truncation check), not by the folder's open.
        open_binary = functools.partial(self.data_folder.open, mode="rb", compression=None)
        records = 0
        for index, line in formats.jsonl_lines(filepath, open_binary=open_binary):
            if isinstance(line, Bad):
                # Records before the cut were yielded; the rest of the file is lost, counted once.
                self.bad_record(filepath, f"after line {index}", line)
                return
            records += 1
            with self.track_time():
                document = self._document(line, filepath, index)
            if document:
                yield document
        if not records:
            self.bad_record(filepath, "line 1", Bad("no records", kind="empty_file"))


class StrictParquetReader(_Policy, ParquetReader):
    """Parquet files (e.g. FineWeb's); rows need a non-empty string in the text column."""

    name = "📒 Parquet (strict)"

    def __init__(self, *args, on_bad_record: str = "raise", **kwargs):
        self.set_policy(on_bad_record)
        super().__init__(*args, **kwargs)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with self.data_folder.open(filepath, "rb") as f:
            try:
                pqf = pq.ParquetFile(f)
            except pa.ArrowException as e:
                self.bad_record(filepath, "file", Bad(str(e), kind="unreadable_file"))
                return
            names = pqf.schema_arrow.names
            rows = pqf.metadata.num_rows
            if self.text_key not in names:
                missing = formats.missing_column(self.text_key, names)
                self.bad_record(filepath, f"all {rows} rows", missing, rows)
                return
            if rows == 0:
                self.bad_record(filepath, "row 1", Bad("no rows", kind="empty_file"))
                return
            columns = (
                None
                if self.read_metadata
                else [c for c in (self.text_key, self.id_key) if c in names]
            )
            what = f"field {self.text_key!r}"
            row = 0
            for batch in pqf.iter_batches(batch_size=self.batch_size, columns=columns):
                for data in batch.to_pylist():
                    text = formats.text_value(data.get(self.text_key), what)
                    if isinstance(text, Bad):
                        self.bad_record(filepath, f"row {row + 1}", text)
                    else:
                        yield self.get_document_from_dict(data, filepath, row)
                    row += 1


class StrictWarcReader(_Policy, WarcReader):
    """WARC/WET files (.warc, .warc.gz); HTML responses become documents (extraction comes later).

    warcio reads gzipped WARC member by member and ends quietly at a cut member, so after the last
    record the gzip stream is checked for completeness (formats' truncation check).
    """

    name = "🕷 Warc (strict)"

    def __init__(self, *args, on_bad_record: str = "raise", **kwargs):
        self.set_policy(on_bad_record)
        # warcio detects and decompresses gzip members itself.
        super().__init__(*args, compression=None, **kwargs)

    def _read_error(self, filepath: str) -> Exception | None:
        try:
            with self.data_folder.open(filepath, "rb", compression=None) as raw:
                for _ in formats.file_chunks(raw, filepath):
                    pass
        except formats.READ_ERRORS as e:
            return e
        return None

    def read_file(self, filepath: str) -> DocumentsPipeline:
        from warcio.exceptions import ArchiveLoadFailed

        n = 0
        try:
            for document in super().read_file(filepath):
                n += 1
                yield document
        except (ArchiveLoadFailed, *formats.READ_ERRORS) as e:
            error = e
        else:
            error = self._read_error(filepath) if filepath.endswith(".gz") else None
        if error is not None:
            bad = Bad(str(error), ends_shard=True, kind="truncated_file")
            self.bad_record(filepath, f"after document {n}", bad)


def iter_documents(
    patterns: str | Sequence[str], on_bad_record: str = "raise"
) -> DocumentsPipeline:
    """Documents of jsonl(.gz/.zst) files matching comma-separated globs, read outside a pipeline."""
    root, names = paths.common_folder(expand_globs(patterns))
    reader = StrictJsonlReader(root, on_bad_record=on_bad_record)
    yield from reader.read_files_shard(names)
