"""Bad input: each kind is an error naming file and record, or a counted drop with skip."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from phi3_jax.data.readers import (
    StrictJsonlReader,
    StrictParquetReader,
    StrictWarcReader,
    iter_documents,
)
from phi3_jax.data.shards import expand_globs
from phi3_jax.errors import BadInputError

LINES = b"".join(
    json.dumps({"id": str(i), "text": f"document {i} " * 50}).encode() + b"\n" for i in range(100)
)


def _read(reader, name):
    return [d.id for d in reader.read_files_shard([name])]


def _counts(reader):
    return {k: v.total for k, v in reader.stats.stats.items() if k.startswith("bad_")}


@pytest.mark.parametrize(
    "name, payload",
    [
        ("cut.jsonl.gz", gzip.compress(LINES, mtime=0)[:-40]),
        ("cut.jsonl.zst", zstandard.ZstdCompressor().compress(LINES)[:-40]),
    ],
)
def test_truncated_compressed_file(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(BadInputError, match=rf"{name}: after line \d+: truncated_file"):
        _read(StrictJsonlReader(str(tmp_path)), name)
    reader = StrictJsonlReader(str(tmp_path), on_bad_record="skip")
    ids = _read(reader, name)
    # What precedes the cut is kept, in order; the loss is counted once.
    assert ids == [str(i) for i in range(len(ids))] and len(ids) < 100
    assert _counts(reader) == {"bad_truncated_file": 1}


def test_multi_frame_zst_reads_every_frame(tmp_path):
    c = zstandard.ZstdCompressor()
    half = LINES.index(b"\n", len(LINES) // 2) + 1
    (tmp_path / "two.jsonl.zst").write_bytes(c.compress(LINES[:half]) + c.compress(LINES[half:]))
    assert _read(StrictJsonlReader(str(tmp_path)), "two.jsonl.zst") == [str(i) for i in range(100)]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"text": "\xff\xfe"}', "invalid_utf8"),
        (b'{"text": "unterminated', "invalid_json"),
        (b'["a", "list"]', "invalid_json"),
        (b'{"body": "no text field"}', "missing_text"),
        (b'{"text": "   "}', "empty_text"),
    ],
)
def test_bad_jsonl_record(tmp_path, line, reason):
    (tmp_path / "f.jsonl").write_bytes(b'{"text": "fine"}\n' + line + b'\n{"text": "also fine"}\n')
    with pytest.raises(BadInputError, match=rf"f\.jsonl: line 2: {reason}"):
        _read(StrictJsonlReader(str(tmp_path)), "f.jsonl")
    reader = StrictJsonlReader(str(tmp_path), on_bad_record="skip")
    assert len(_read(reader, "f.jsonl")) == 2
    assert _counts(reader) == {f"bad_{reason}": 1}


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"e\.jsonl: line 1: empty_file"):
        _read(StrictJsonlReader(str(tmp_path)), "e.jsonl")
    reader = StrictJsonlReader(str(tmp_path), on_bad_record="skip")
    assert _read(reader, "e.jsonl") == [] and _counts(reader) == {"bad_empty_file": 1}


def test_parquet_without_the_text_column_and_with_null_text(tmp_path):
    pq.write_table(pa.table({"content": ["a", "b", "c"]}), tmp_path / "nocol.parquet")
    pq.write_table(
        pa.table({"text": ["a", None, "c"], "id": ["x", "y", "z"]}), tmp_path / "null.parquet"
    )
    with pytest.raises(
        BadInputError, match=r"nocol\.parquet: all 3 rows: missing_column: no column 'text'"
    ):
        _read(StrictParquetReader(str(tmp_path)), "nocol.parquet")
    with pytest.raises(BadInputError, match=r"null\.parquet: row 2: empty_text"):
        _read(StrictParquetReader(str(tmp_path)), "null.parquet")
    reader = StrictParquetReader(str(tmp_path), on_bad_record="skip")
    assert _read(reader, "nocol.parquet") == [] and _read(reader, "null.parquet") == ["x", "z"]
    assert _counts(reader) == {"bad_missing_column": 3, "bad_empty_text": 1}


def test_warc_html_responses_become_documents_and_a_cut_file_is_bad(tmp_path):
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    def record(writer, i):
        html = (
            f"<html><body><p>Page {i} explains how lists work in Python.</p></body></html>".encode()
        )
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.0")
        writer.write_record(
            writer.create_warc_record(
                f"http://example.com/{i}", "response", payload=BytesIO(html), http_headers=headers
            )
        )

    with open(tmp_path / "a.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i in range(3):
            record(writer, i)
    docs = list(StrictWarcReader(str(tmp_path)).read_files_shard(["a.warc.gz"]))
    assert [d.metadata["url"] for d in docs] == [f"http://example.com/{i}" for i in range(3)]
    (tmp_path / "cut.warc.gz").write_bytes((tmp_path / "a.warc.gz").read_bytes()[:-60])
    with pytest.raises(BadInputError, match=r"cut\.warc\.gz: after document 2: truncated_file"):
        _read(StrictWarcReader(str(tmp_path)), "cut.warc.gz")


def test_globs_and_policy_values(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_globs(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="on_bad_record"):
        StrictJsonlReader(str(tmp_path), on_bad_record="ignore")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "b"}\n')
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "a"}\n')
    assert [d.text for d in iter_documents(f"{tmp_path}/*.jsonl")] == ["a", "b"]
