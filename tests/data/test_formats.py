"""The one reading layer, bytes to records: lines split across chunks, every compression read the
same (concatenated frames and members too), a cut stream one Bad ending the file after the records
before it, and each kind of bad line or value named."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from phi3_jax.data import formats
from phi3_jax.data.formats import Bad

LINES = [b'{"text": "a"}', b"", b'{"text": "b"}', b'{"text": "c"}']


def test_split_lines_joins_lines_across_chunks():
    chunks = [b"ab", b"c\nd", b"", b"e\n\nf", b"g"]
    assert list(formats.split_lines(iter(chunks))) == [b"abc", b"de", b"", b"fg"]
    assert list(formats.split_lines(iter([b"x\n"]))) == [b"x"]


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_every_compression_reads_the_same_records(tmp_path, suffix):
    body = b"\n".join(LINES) + b"\n"
    half = len(body) // 2
    pack = {
        "": lambda b: b,
        # Two members / frames, split inside a line.
        ".gz": lambda b: gzip.compress(b[:half]) + gzip.compress(b[half:]),
        ".zst": lambda b: zstandard.compress(b[:half]) + zstandard.compress(b[half:]),
    }[suffix]
    path = tmp_path / f"a.jsonl{suffix}"
    path.write_bytes(pack(body))
    assert list(formats.jsonl_lines(str(path))) == [(0, LINES[0]), (2, LINES[2]), (3, LINES[3])]
    # From record 2 on: the blank line 1 still counts.
    assert [i for i, _ in formats.jsonl_lines(str(path), start=2)] == [2, 3]


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_cut_stream_is_one_bad_after_the_records_before_it(tmp_path, suffix):
    # zstd decodes whole blocks (128 KiB of text): enough lines for several.
    body = b"\n".join(f'{{"text": "{i}"}}'.encode() for i in range(30_000)) + b"\n"
    packed = gzip.compress(body) if suffix == ".gz" else zstandard.compress(body)
    path = tmp_path / f"cut.jsonl{suffix}"
    path.write_bytes(packed[: len(packed) * 3 // 4])
    got = list(formats.jsonl_lines(str(path)))
    *records, (index, last) = got
    assert records and all(line.startswith(b'{"text": ') for _, line in records)
    assert index == len(records) < 30_000
    assert isinstance(last, Bad) and last.ends_shard and last.kind == "truncated_file"


def test_a_missing_file_is_a_bad_ending_it(tmp_path):
    ((index, bad),) = formats.jsonl_lines(str(tmp_path / "gone.jsonl"))
    assert index == 0 and bad.kind == "truncated_file" and "gone.jsonl" in bad.reason


@pytest.mark.parametrize(
    "line, kind, reason",
    [
        (b'{"text": "caf\xe9"}', "invalid_utf8", "invalid UTF-8 at byte 13"),
        (b'{"text": ', "invalid_json", "invalid JSON: Expecting value"),
        (b'["text"]', "invalid_json", "not a JSON object: list"),
        (b'{"text": "a\\ud800"}', "invalid_unicode", "invalid Unicode in field 'text'"),
        (b'{"body": "x"}', "missing_text", "no field 'text'"),
        (b'{"text": null}', "empty_text", "field 'text' is null"),
        (b'{"text": "  "}', "empty_text", "field 'text' is empty"),
        (b'{"text": 12}', "text_not_a_string", "field 'text' is int 12"),
    ],
)
def test_each_bad_line_is_named(line, kind, reason):
    bad = formats.json_text(line, "text")
    assert isinstance(bad, Bad) and bad.kind == kind and not bad.ends_shard
    assert bad.reason.startswith(reason)


def test_good_lines_and_fields():
    assert formats.json_text('{"text": "café", "n": 1}'.encode(), "text") == "café"
    pair = b'{"prompt": "p", "chosen": "c", "rejected": null}'
    assert formats.json_fields(pair, ("prompt", "chosen")) == {"prompt": "p", "chosen": "c"}
    missing = formats.json_fields(pair, ("prompt", "rejected"))
    assert missing == Bad("no field 'rejected'", kind="missing_field")
    column = formats.missing_column("text", ["body", "id"])
    assert column.ends_shard and column.reason == "no column 'text' (columns: body, id)"
