"""Streaming shard sources: every format, exact resume, disjoint process/worker shards, eval split,
and each kind of bad input in both `raise` and `skip` modes."""

from __future__ import annotations

import collections
import gzip

import numpy as np
import pytest
import zstandard
from shard_fixtures import (
    jsonl_bytes,
    texts,
    token_bytes,
    write_arrayrecord,
    write_jsonl,
    write_parquet,
)

from phi3_jax.data.shard_records import SourceSpec, read_records
from phi3_jax.data.sources import ReadOptions, ShardSource, counters
from phi3_jax.errors import BadInputError


def utf8_ids(payload: str | np.ndarray) -> np.ndarray:
    """Text → its UTF-8 bytes as ids (reversible, so a test can read documents back)."""
    if isinstance(payload, str):
        return np.frombuffer(payload.encode(), np.uint8).astype(np.int32)
    return payload


def as_text(ids: np.ndarray) -> str:
    return ids.astype(np.uint8).tobytes().decode()


def read_all(source: ShardSource) -> list[str]:
    return [as_text(d["ids"]) for d in source]


def one_pass(on_bad: str = "raise", **kwargs) -> ReadOptions:
    return ReadOptions(on_bad=on_bad, repeat=False, **kwargs)


def source(tmp_path, globs, fmt="jsonl", on_bad="raise", **kwargs) -> ShardSource:
    spec = SourceSpec("test", tuple(str(tmp_path / g) for g in globs), fmt)
    return ShardSource(spec, utf8_ids, one_pass(on_bad), **kwargs)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_reads_every_document_with_a_custom_field(tmp_path, suffix):
    docs = texts("web", 30)
    for s in range(3):
        write_jsonl(str(tmp_path / f"s{s}{suffix}"), [{"body": t, "id": 1} for t in docs[s::3]])
    spec = SourceSpec("web", (str(tmp_path / f"*{suffix}"),), "jsonl", text_field="body")
    assert sorted(read_all(ShardSource(spec, utf8_ids, one_pass()))) == sorted(docs)


def test_parquet_is_read_by_row_group_and_arrayrecord_as_text_or_tokens(tmp_path):
    docs = texts("web", 25)
    write_parquet(str(tmp_path / "a.parquet"), {"text": docs, "n": list(range(25))}, 4)
    assert read_all(source(tmp_path, ["a.parquet"], "parquet")) == docs

    write_arrayrecord(str(tmp_path / "a.array_record"), [t.encode() for t in docs])
    assert read_all(source(tmp_path, ["a.array_record"], "arrayrecord_text")) == docs

    ids = [[i, i + 1, 70000 + i] for i in range(10)]
    write_arrayrecord(str(tmp_path / "t.array_record"), [token_bytes(x) for x in ids])
    got = [d["ids"].tolist() for d in source(tmp_path, ["t.array_record"], "arrayrecord_tokens")]
    assert got == ids


@pytest.mark.parametrize(
    "name,fmt", [("s.jsonl.zst", "jsonl"), ("s.parquet", "parquet"), ("s.ar", "arrayrecord_text")]
)
def test_restored_iterator_continues_exactly(tmp_path, name, fmt):
    docs = texts("web", 40)
    path = str(tmp_path / name)
    if fmt == "jsonl":
        write_jsonl(path, [{"text": t} for t in docs])
    elif fmt == "parquet":
        write_parquet(path, {"text": docs}, 7)
    else:
        write_arrayrecord(path, [t.encode() for t in docs])
    spec = SourceSpec("web", (path,), fmt)
    # Repeat on: the restore point (record 23 of epoch 1) is past an epoch boundary.
    it = iter(ShardSource(spec, utf8_ids, ReadOptions(repeat=True)))
    first = [as_text(next(it)["ids"]) for _ in range(63)]
    state = it.get_state()
    rest = [as_text(next(it)["ids"]) for _ in range(30)]

    fresh = iter(ShardSource(spec, utf8_ids, ReadOptions(repeat=True)))
    fresh.set_state(state)
    assert [as_text(next(fresh)["ids"]) for _ in range(30)] == rest
    assert first + rest == (docs * 3)[:93]
    assert state["epoch"] == 1 and state["record"] == 23


@pytest.mark.parametrize("shards", [7, 3, 1])
def test_two_processes_with_two_workers_read_exactly_what_one_reads(tmp_path, shards):
    # 7 shards: divided by shard; 3: by shard among processes, then by record in one process;
    # 1: by record everywhere.
    docs = texts("web", 140)
    for s in range(shards):
        write_jsonl(str(tmp_path / f"s{s}.jsonl"), [{"text": t} for t in docs[s::shards]])
    single = read_all(source(tmp_path, ["*.jsonl"]))
    parts = []
    for process in range(2):
        for worker in range(2):
            src = source(tmp_path, ["*.jsonl"], process_index=process, process_count=2)
            src.set_slice(slice(worker, None, 2))
            parts.append(read_all(src))
    assert sorted(single) == sorted(docs)
    assert all(len(part) >= 140 // 8 for part in parts)
    everything = [doc for part in parts for doc in part]
    assert sorted(everything) == sorted(single)  # The same multiset: nothing missed, no overlap.


def test_eval_split_is_a_stable_disjoint_hash_partition(tmp_path):
    docs = texts("web", 2000)
    write_jsonl(str(tmp_path / "s.jsonl"), [{"text": t} for t in docs])
    spec = SourceSpec("web", (str(tmp_path / "s.jsonl"),))

    def split(name):
        opts = ReadOptions(split=name, eval_fraction=0.1, repeat=False)
        return read_all(ShardSource(spec, utf8_ids, opts))

    train, held_out = split("train"), split("eval")
    assert sorted(train + held_out) == sorted(docs)
    assert not set(train) & set(held_out)
    assert 0.08 < len(held_out) / len(docs) < 0.12
    assert split("eval") == held_out


def test_counters_sum_readers_found_anywhere_in_a_state_tree(tmp_path):
    write_jsonl(str(tmp_path / "s.jsonl"), [{"text": "ab"}, {"text": "cde"}])
    it = iter(source(tmp_path, ["s.jsonl"]))
    list(it)
    state = it.get_state()
    tree = {"parents": [state, {"x": [state]}], "other": 3}
    assert counters(tree) == {
        "test": {
            "documents": 4,
            "tokens": 10,
            "bad_records": 0,
            "bad_shards": 0,
            "too_long_dropped": 0,
            "too_long_truncated": 0,
        }
    }


# Bad input: each case builds a source with some good shards and one bad thing; `raise` must name
# the file (and record where there is one), `skip` must read every good document and count the bad.

GOOD = texts("web", 12)


def _good_shards(tmp_path):
    write_jsonl(str(tmp_path / "good0.jsonl"), [{"text": t} for t in GOOD[:6]])
    write_jsonl(str(tmp_path / "good1.jsonl.zst"), [{"text": t} for t in GOOD[6:]])
    return [str(tmp_path / "good*")]


def _truncated(tmp_path, compress, suffix):
    docs = texts("big", 3000, max_words=60)  # Several zstd blocks.
    data = compress(jsonl_bytes([{"text": t} for t in docs]))
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(data[: len(data) // 2])
    return [str(path)], rf"bad{suffix}: unreadable: .*truncated.*\(at record \d+\)", docs


def _bad_line(tmp_path, line: bytes, name="bad.jsonl"):
    path = tmp_path / name
    path.write_bytes(
        jsonl_bytes([{"text": "before"}]) + line + b"\n" + jsonl_bytes([{"text": "after"}])
    )
    return [str(path)]


def case_truncated_gz(tmp_path):
    return _truncated(tmp_path, gzip.compress, ".jsonl.gz")


def case_truncated_zst(tmp_path):
    return _truncated(tmp_path, zstandard.ZstdCompressor().compress, ".jsonl.zst")


def case_invalid_utf8(tmp_path):
    globs = _bad_line(tmp_path, b'{"text": "caf\xe9"}')
    return globs, r"bad.jsonl: record 1: invalid UTF-8", ["before", "after"]


def case_lone_surrogate(tmp_path):
    globs = _bad_line(tmp_path, b'{"text": "a\\ud800b"}')
    return globs, r"bad.jsonl: record 1: invalid Unicode", ["before", "after"]


def case_no_text_field(tmp_path):
    globs = _bad_line(tmp_path, b'{"body": "x"}')
    return globs, r"bad.jsonl: record 1: no field 'text'", ["before", "after"]


def case_empty_file(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b"")
    return [str(tmp_path / "bad.jsonl")], r"bad.jsonl: empty shard", []


def case_missing_file(tmp_path):
    return [str(tmp_path / "gone.jsonl")], r"gone.jsonl: missing file", []


def case_glob_matching_nothing(tmp_path):
    return [str(tmp_path / "nothing-*.jsonl")], r"glob '.*nothing-\*.jsonl' matches no file", []


def case_parquet_without_column(tmp_path):
    write_parquet(str(tmp_path / "bad.parquet"), {"body": ["a", "b"]}, 1)
    return [str(tmp_path / "bad.parquet")], r"bad.parquet: no column 'text'", []


BAD_CASES = [
    case_truncated_gz,
    case_truncated_zst,
    case_invalid_utf8,
    case_lone_surrogate,
    case_no_text_field,
    case_empty_file,
    case_missing_file,
    case_glob_matching_nothing,
    case_parquet_without_column,
]


def _mixed_format_source(tmp_path, bad_globs, on_bad) -> ShardSource:
    # The parquet case needs its own source format; its good shards are parquet too.
    fmt = "parquet" if any(g.endswith(".parquet") for g in bad_globs) else "jsonl"
    if fmt == "parquet":
        write_parquet(str(tmp_path / "good.parquet"), {"text": GOOD}, 5)
        good = [str(tmp_path / "good.parquet")]
    else:
        good = _good_shards(tmp_path)
    spec = SourceSpec("test", tuple(good + bad_globs), fmt)
    return ShardSource(spec, utf8_ids, one_pass(on_bad))


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.__name__[5:])
def test_bad_input_raises_naming_file_and_record(tmp_path, case):
    bad_globs, message, _ = case(tmp_path)
    with pytest.raises(BadInputError, match=message):
        read_all(_mixed_format_source(tmp_path, bad_globs, "raise"))


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.__name__[5:])
def test_bad_input_is_skipped_and_counted(tmp_path, case):
    bad_globs, _, readable = case(tmp_path)
    it = iter(_mixed_format_source(tmp_path, bad_globs, "skip"))
    got = [as_text(d["ids"]) for d in it]
    count = counters(it.get_state())["test"]
    # Every good document arrives, and everything else is accounted for.
    good_read = [t for t in got if t in GOOD]
    assert sorted(good_read) == sorted(GOOD)
    extra = [t for t in got if t not in GOOD]
    if case in (case_truncated_gz, case_truncated_zst):
        # The readable prefix of the truncated shard, in order, then one bad shard.
        assert extra and extra == readable[: len(extra)]
        assert (count["bad_records"], count["bad_shards"]) == (0, 1)
    elif case in (case_invalid_utf8, case_lone_surrogate, case_no_text_field):
        assert extra == readable
        assert (count["bad_records"], count["bad_shards"]) == (1, 0)
    else:
        assert extra == []
        assert (count["bad_records"], count["bad_shards"]) == (0, 1)
    assert count["documents"] == len(got)


def test_a_source_with_no_usable_document_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b'{"body": 1}\n')
    spec = SourceSpec("test", (str(tmp_path / "bad.jsonl"),))
    it = iter(ShardSource(spec, utf8_ids, ReadOptions(on_bad="skip", repeat=True)))
    with pytest.raises(BadInputError, match="no usable train document"):
        next(it)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrayrecord_text", "arrayrecord_tokens"])
def test_a_shard_that_cannot_be_opened_is_one_bad_shard(tmp_path, fmt):
    path = tmp_path / "corrupt"
    path.write_bytes(b"\x00\xff not a shard of any format" if fmt != "jsonl" else b"")
    spec = SourceSpec("test", (str(path),), fmt)
    if fmt == "jsonl":
        # No file at all: the glob resolved it, then it vanished before it was opened.
        path.unlink()
    [(index, bad)] = list(read_records(spec, str(path)))
    assert index == 0 and bad.ends_shard
    assert ("No such file" if fmt == "jsonl" else "cannot open") in bad.reason


def test_shared_shards_count_each_problem_once(tmp_path):
    # Two shards, three workers: every worker reads both, keeping every third record.
    _bad_line(tmp_path, b'{"body": "x"}')
    (tmp_path / "empty.jsonl").write_bytes(b"")
    totals = collections.Counter()
    docs = []
    for worker in range(3):
        src = source(tmp_path, ["bad.jsonl", "empty.jsonl"], on_bad="skip")
        src.set_slice(slice(worker, None, 3))
        it = iter(src)
        docs += [as_text(d["ids"]) for d in it]
        totals.update(counters(it.get_state())["test"])
    assert sorted(docs) == ["after", "before"]
    assert (totals["bad_records"], totals["bad_shards"], totals["documents"]) == (1, 1, 2)
