"""One shard's records in every format the sources read, from any record on: text or fields of
JSON lines and parquet (across row groups), ArrayRecord text and token ids; a bad record is a Bad
in its place, a missing column or a file that is not parquet one Bad ending the shard."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from phi3_jax.data.formats import Bad
from phi3_jax.data.shard_records import SourceSpec, read_records

TEXTS = ["one", "two", "three", "four", "five"]


def _spec(fmt: str, **kw) -> SourceSpec:
    return SourceSpec(name="s", globs=(), format=fmt, **kw)


def _arrayrecord(path, records: list[bytes]) -> str:
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    return str(path)


def test_jsonl_text_and_fields_from_any_record(tmp_path):
    lines = [f'{{"text": "{t}", "n": {i}}}' for i, t in enumerate(TEXTS)]
    lines[3] = '{"n": 3}'
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = list(read_records(_spec("jsonl"), str(path), start=2))
    assert got[0] == (2, "three") and got[2] == (4, "five")
    assert got[1][0] == 3 and got[1][1] == Bad("no field 'text'", kind="missing_text")
    fields = list(read_records(_spec("jsonl", fields=("n",)), str(path)))
    assert fields == [(i, {"n": i}) for i in range(5)]


def test_parquet_across_row_groups_and_a_missing_column(tmp_path):
    path = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": TEXTS}), path, row_group_size=2)
    assert list(read_records(_spec("parquet", text_field="body"), path, start=3)) == [
        (3, "four"),
        (4, "five"),
    ]
    ((index, bad),) = read_records(_spec("parquet"), path)
    assert index == 0 and bad.ends_shard and bad.reason == "no column 'text' (columns: body)"
    (tmp_path / "b.parquet").write_bytes(b"not parquet")
    ((_, bad),) = read_records(_spec("parquet"), str(tmp_path / "b.parquet"))
    assert bad.ends_shard and bad.reason.startswith("cannot open parquet")


def test_arrayrecord_text_and_tokens(tmp_path):
    texts = _arrayrecord(tmp_path / "t.array_record", [t.encode() for t in TEXTS] + [b"\xff"])
    got = list(read_records(_spec("arrayrecord_text"), texts, start=4))
    assert got[0] == (4, "five") and got[1][1].kind == "invalid_utf8"
    ids = [np.asarray([1, 2, 3], "<i4").tobytes(), b"\x01\x00"]
    tokens = list(read_records(_spec("arrayrecord_tokens"), _arrayrecord(tmp_path / "i", ids)))
    assert tokens[0][1].tolist() == [1, 2, 3] and tokens[0][1].dtype == np.int32
    assert isinstance(tokens[1][1], Bad) and "2 bytes is not" in tokens[1][1].reason


def test_a_format_that_takes_no_fields_is_named():
    with pytest.raises(ValueError, match=r"fields \('n',\) need jsonl or parquet shards"):
        read_records(_spec("arrayrecord_text", fields=("n",)), "x")
