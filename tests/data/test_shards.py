"""Shard files: what globs and paths name (in order, each once, every pattern naming nothing
reported with its kind of error) and zstd JSON-lines shards written deterministically."""

from __future__ import annotations

import json
import pathlib

import pytest
import zstandard

from phi3_jax.data.shards import expand_globs, match_shards, write_jsonl_zst, write_shards


def _touch(directory, *names):
    for name in names:
        (directory / name).write_text("{}\n")


def test_match_shards_in_order_each_once_and_every_miss_reported(tmp_path):
    _touch(tmp_path, "b.jsonl", "a.jsonl", "c.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    patterns = [
        str(tmp_path / "c.jsonl"),
        str(tmp_path / "[ab].jsonl"),
        str(tmp_path / "*.jsonl"),  # a, b and c again, and the folder
        str(tmp_path / "nothing-*.jsonl"),
        str(tmp_path / "gone.jsonl"),
        str(tmp_path / "folder.jsonl"),
    ]
    files, problems = match_shards(patterns)
    names = [f.rsplit("/", 1)[1] for f in files]
    # A glob's matches come sorted; a file a later pattern names again is not repeated. The
    # sources (and expand_globs) leave a folder a glob matches to their own check.
    assert names == ["c.jsonl", "a.jsonl", "b.jsonl", "folder.jsonl"]
    assert [type(p) for p in problems] == [FileNotFoundError, FileNotFoundError, IsADirectoryError]
    assert str(problems[0]) == f"glob {str(tmp_path / 'nothing-*.jsonl')!r} matches no file"
    assert str(problems[1]) == f"{tmp_path / 'gone.jsonl'}: missing file"
    assert str(problems[2]) == f"{tmp_path / 'folder.jsonl'}: a directory, not a shard file"


def test_expand_globs_takes_a_comma_list_and_raises_the_first_miss(tmp_path):
    _touch(tmp_path, "a.jsonl", "b.json")
    got = expand_globs(f"{tmp_path}/*.jsonl,,{tmp_path}/*.json,{tmp_path}/a.jsonl")
    assert [f.rsplit("/", 1)[1] for f in got] == ["a.jsonl", "b.json"]
    with pytest.raises(FileNotFoundError, match=r"gone\.jsonl: missing file"):
        expand_globs([str(tmp_path / "a.jsonl"), str(tmp_path / "gone.jsonl")])
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(
        IsADirectoryError, match=r"x\.jsonl: a directory, not a shard file \(matched"
    ):
        expand_globs(str(tmp_path / "*.jsonl"))


def test_written_shards_read_back_and_the_same_records_give_the_same_bytes(tmp_path):
    records = [{"text": f"document {i}", "id": i} for i in range(5)]
    first = write_shards(records, str(tmp_path / "one"), docs_per_shard=2)
    again = write_shards(records, str(tmp_path / "two"), docs_per_shard=2)
    assert [p.rsplit("/", 1)[1] for p in first] == [
        "00000.jsonl.zst",
        "00001.jsonl.zst",
        "00002.jsonl.zst",
    ]
    read = []
    for path in first:
        text = zstandard.ZstdDecompressor().decompress(pathlib.Path(path).read_bytes()).decode()
        read += [json.loads(line) for line in text.splitlines()]
    assert read == records
    for a, b in zip(first, again, strict=True):
        assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
    assert write_jsonl_zst([], str(tmp_path / "deep" / "empty.jsonl.zst")) == 0
