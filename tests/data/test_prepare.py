"""The prepare job end to end: each filter, phases, MinHash, 1 vs 4 tasks, resume, manifest."""

from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from phi3_jax.config import default_config
from phi3_jax.data import prepare
from phi3_jax.data.prepare import manifest as prepare_manifest
from phi3_jax.data.prepare import pipeline as prepare_pipeline
from phi3_jax.data.readers import StrictParquetReader, iter_documents
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.errors import BadInputError

QUALITY_MODEL = "data/quality/edu.bin"
TOKENIZER = "data/tokenizer.model"
SHIPPED_WEB = "data/web/phase1/*.jsonl.zst"

GOOD = [
    "A list in Python is an ordered collection of items, and it can grow or shrink as a program "
    "runs.\nYou create a list by writing its items between square brackets, separated by commas, "
    "and you read an item by giving its position, counting from zero.\nThe append method adds one "
    "item at the end of the list, while the extend method adds every item of another iterable in "
    "order.\nBecause a list is mutable, two names that refer to the same list both see a change "
    "made through either of them, which is a common source of surprise for new programmers.\n"
    "When you need an independent copy, call the copy method or slice the whole list, and then "
    "changes to one of them are no longer visible through the other.",
    "A dictionary maps keys to values, and it finds the value of a key in about the same time "
    "however large the dictionary is.\nKeys must be hashable, which means that their hash value "
    "never changes during their lifetime; strings, numbers and tuples of such objects qualify.\n"
    "Looking up a key that is missing raises a KeyError exception, so code that is not sure "
    "whether a key exists can call the get method with a default value instead.\nSince Python "
    "3.7 a dictionary remembers the order in which its keys were inserted, and iterating over it "
    "yields the keys in that order.\nThe items method returns pairs of keys and values, which is "
    "the natural way to loop over both of them at once.",
    "A function is defined with the def statement, followed by its name, its parameters in "
    "parentheses and an indented body.\nWhen the function is called, each parameter is bound to "
    "the corresponding argument, and the body runs until it reaches a return statement or its "
    "end.\nA function that ends without a return statement returns None, which is why printing "
    "the result of such a call shows that value.\nDefault values for parameters are evaluated "
    "once, when the function is defined, so a mutable default such as an empty list is shared "
    "between all the calls that do not pass that argument.\nKeyword arguments let the caller "
    "name the parameters, which makes long calls much easier to read and to check.",
]
# Each bad document is made to fail exactly one stage, named with the reason datatrove reports.
BAD = {
    "👯 Gopher Repetition": "Buy cheap watches now and save more money today.\n" * 40,
    "🥇 Gopher Quality": "\n".join(
        " ".join(f"{random.Random(i * 100 + j).random():.4f}" for j in range(12)) for i in range(8)
    ),
    "⛰ C4 Quality": GOOD[0] + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
    # A table of contents: no line ends a sentence.
    "🍷 FineWeb Quality": "Reading and writing files with the open function and context managers\n"
    "How the garbage collector finds reference cycles in long running programs\n"
    "Formatting numbers and dates with format strings and the datetime module\n"
    "Sorting records by several keys at once using tuples as the sort key\n"
    "Measuring the speed of small snippets of code with the timeit module\n"
    "Writing command line tools that parse their options with argparse\n"
    "Running several tasks at the same time with threads or processes\n"
    "Testing your code with unittest and the assertions it provides for you\n"
    "Storing structured data in JSON files and reading it back again later\n"
    "Working with paths on every operating system using the pathlib classes",
    "🎓 educational value": "Huge summer sale on sneakers, phone cases and sunglasses this weekend only.\n"
    "Click here to buy now and get free shipping on every order over fifty dollars.\n"
    "Sign up for our newsletter to get a coupon, follow us for more deals and share with friends.\n"
    "Celebrity fans love our new smart watches, and tickets for the match on Saturday are on sale.\n"
    "Limited stock, best deals of the year, subscribe now and do not miss the next big offer.",
}


def _records(texts, prefix):
    return [{"id": f"{prefix}/{i}", "text": t} for i, t in enumerate(texts)]


def _kept(folder: str) -> list:
    return list(iter_documents(os.path.join(folder, "*.jsonl.zst")))


def _run(tmp_path, name, input_glob, **kwargs):
    out = str(tmp_path / name)
    kwargs.setdefault("workers", 1)
    result = prepare.run(input_glob, out, QUALITY_MODEL, **kwargs)
    return out, result


def _step(steps, name):
    return next(s["counts"] for s in steps if s["step"].endswith(name))


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("filters")
    texts = GOOD + list(BAD.values())
    write_jsonl_zst(_records(texts, "hand"), str(tmp / "in" / "hand.jsonl.zst"))
    return _run(tmp, "out", str(tmp / "in" / "*.jsonl.zst"), phase=2, tokenizer=TOKENIZER)


def test_each_filter_drops_its_bad_document_and_keeps_the_good(filtered):
    out, manifest = filtered
    assert sorted(d.text for d in _kept(f"{out}/phase1")) == sorted(GOOD)
    steps = manifest["steps"]["filter"]
    # Every bad document is dropped by the stage built to catch it, and by no earlier one.
    for name in BAD:
        assert _step(steps, name)["dropped"] == 1, name
    assert _step(steps, "Gopher Quality")["dropped_gopher_below_alpha_threshold"] == 1
    assert _step(steps, "C4 Quality")["dropped_lorem_ipsum"] == 1
    assert _step(steps, "FineWeb Quality")["dropped_line_punct_ratio"] == 1
    assert _step(steps, "Jsonl (strict)")["documents"] == len(GOOD) + len(BAD)
    assert manifest["kept"]["phase1"] == len(GOOD)
    assert manifest["bad_records"] == {}


def test_phase2_is_a_stricter_subset_and_the_manifest_lists_outputs(filtered):
    out, manifest = filtered
    phase1 = {d.text for d in _kept(f"{out}/phase1")}
    phase2 = {d.text for d in _kept(f"{out}/phase2")}
    assert phase2 <= phase1
    assert manifest["kept"]["phase2"] == len(phase2)
    assert (
        manifest["settings"]["phases"]["2"]["quality_threshold"]
        > manifest["settings"]["phases"]["1"]["quality_threshold"]
    )
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk["kept"] == manifest["kept"]
    for phase in ("phase1", "phase2"):
        for entry in manifest["outputs"][phase]:
            assert entry == prepare_manifest.file_entry(entry["path"])
    assert all(len(d.metadata) and d.metadata["__label__hq"] >= 0.9 for d in _kept(f"{out}/phase2"))
    assert manifest["inputs"] == [
        prepare_manifest.file_entry(f) for f in sorted(glob.glob(f"{os.path.dirname(out)}/in/*"))
    ]


def test_token_shards_hold_each_kept_document_in_order(filtered):
    out, manifest = filtered
    tok = load_tokenizer(default_config())  # its tokenizer: data/tokenizer.model
    for phase in ("phase1", "phase2"):
        texts = [d.text for d in _kept(f"{out}/{phase}")]
        (shard,) = manifest["outputs"][f"{phase}_tokens"]
        reader = ArrayRecordReader(shard["path"])
        records = reader.read(list(range(reader.num_records())))
        assert [tok.decode(np.frombuffer(r, dtype="<i4").tolist()) for r in records] == texts


def test_the_same_stages_build_on_every_executor(tmp_path):
    stage_list = prepare_pipeline.stages(
        [str(tmp_path / "a.jsonl")],
        str(tmp_path / "out"),
        str(tmp_path / "work"),
        QUALITY_MODEL,
        4,
        2,
        "raise",
    )
    assert [(s.name, s.tasks) for s in stage_list] == [
        ("filter", 4),
        ("buckets", 14),
        ("clusters", 1),
        ("phase1", 4),
        ("phase2", 4),
    ]
    for kind, extra in (
        ("local", {}),
        ("slurm", {"slurm": {"partition": "cpu", "time": "1:00:00"}}),
        ("ray", {}),
    ):
        executors = prepare.make_executors(stage_list, str(tmp_path / "work"), kind, 2, **extra)
        assert [e.pipeline for e in executors] == [s.pipeline for s in stage_list]
        assert [e.depends for e in executors] == [None] + executors[:-1]
        assert {type(e).__name__ for e in executors} == {f"{kind.capitalize()}PipelineExecutor"}


def _near_duplicate(text: str) -> str:
    # One word in a hundred changed: 5-gram Jaccard similarity about 0.9.
    words = text.split(" ")
    for i in range(50, len(words), 100):
        words[i] = "variant"
    return " ".join(words)


@pytest.fixture(scope="module")
def dedup_inputs(tmp_path_factory):
    """24 distinct shipped web documents in 4 files, 3 planted near-duplicates, 1 exact copy."""
    docs = [d.text for d in iter_documents(SHIPPED_WEB) if len(d.text.split(" ")) >= 300][:24]
    assert len(docs) == 24
    files = [docs[i::4] for i in range(4)]
    # Near-duplicates sit in their original's file; the exact copy goes to another file.
    planted = [
        (0, _near_duplicate(files[0][0])),
        (1, _near_duplicate(files[1][1])),
        (2, _near_duplicate(files[2][2])),
    ]
    for f, text in planted:
        files[f].append(text)
    files[3].append(files[0][1])
    tmp = tmp_path_factory.mktemp("dedup")
    for i, texts in enumerate(files):
        write_jsonl_zst(_records(texts, f"file{i}"), str(tmp / "in" / f"{i}.jsonl.zst"))
    return tmp, str(tmp / "in" / "*.jsonl.zst"), docs


def test_minhash_removes_planted_near_duplicates_and_keeps_the_rest(dedup_inputs):
    tmp, inputs, docs = dedup_inputs
    out, manifest = _run(tmp, "one_task", inputs, tasks=1)
    kept = [d.text for d in _kept(f"{out}/phase1")]
    assert sorted(kept) == sorted(docs)
    assert _step(manifest["steps"]["phase1"], "MinHash stage 4")["dropped"] == 4
    assert manifest["kept"]["phase1"] == 24


def test_one_task_and_four_tasks_keep_the_same_documents(dedup_inputs):
    tmp, inputs, _ = dedup_inputs
    one, _ = _run(tmp, "one_task", inputs, tasks=1)
    four, manifest = _run(tmp, "four_tasks", inputs, tasks=4)
    assert len(manifest["outputs"]["phase1"]) == 4
    assert sorted(d.text for d in _kept(f"{four}/phase1")) == sorted(
        d.text for d in _kept(f"{one}/phase1")
    )


def test_rerun_after_a_killed_task_resumes_without_duplicates(dedup_inputs):
    tmp, inputs, docs = dedup_inputs
    out, first = _run(tmp, "resume", inputs, tasks=4)
    # A task killed mid-way left neither its completion marker nor a finished shard.
    os.remove(os.path.join(out, "work", "logs", "phase1", "completions", "00002"))
    with open(os.path.join(out, "phase1", "00002.jsonl.zst"), "r+b") as f:
        f.truncate(10)
    _, second = _run(tmp, "resume", inputs, tasks=4)
    kept = [d.text for d in _kept(f"{out}/phase1")]
    assert sorted(kept) == sorted(docs)
    assert second["outputs"] == first["outputs"]


def test_skip_counts_bad_records_in_the_manifest(tmp_path):
    good = _records(GOOD, "good")
    (tmp_path / "in").mkdir()
    write_jsonl_zst(good, str(tmp_path / "in" / "good.jsonl.zst"))
    with open(tmp_path / "in" / "bad.jsonl", "wb") as f:
        f.write(
            b'{"text": "caf\xc3\xa9 ok"}\n{"text": "\xff\xfe broken"}\n{"id": "no text"}\nnot json\n'
            b'{"text": 1234.5}\n'
        )
    (tmp_path / "in" / "empty.jsonl").write_bytes(b"")
    with pytest.raises(Exception, match=r"bad\.jsonl: line 2: invalid_utf8"):
        _run(tmp_path, "raise", str(tmp_path / "in" / "*"))
    _, manifest = _run(tmp_path, "skip", str(tmp_path / "in" / "*"), on_bad_record="skip")
    assert manifest["bad_records"] == {
        "invalid_utf8": 1,
        "missing_text": 1,
        "invalid_json": 1,
        "empty_file": 1,
        "text_not_a_string": 1,
    }
    assert manifest["kept"]["phase1"] == len(GOOD)


def test_parquet_and_warc_inputs_share_one_pipeline(tmp_path):
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"text": GOOD[:2], "id": ["p0", "p1"]}), tmp_path / "in" / "a.parquet")
    html = "<html><body><nav>Home | Shop | Login</nav><article>"
    html += "".join(f"<p>{line}</p>" for line in GOOD[2].split("\n")) + "</article></body></html>"
    with open(tmp_path / "in" / "b.warc.gz", "wb") as f:
        writer = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.0")
        payload = BytesIO(html.encode())
        writer.write_record(
            writer.create_warc_record(
                "http://example.com/functions", "response", payload=payload, http_headers=headers
            )
        )
    out, manifest = _run(tmp_path, "out", f"{tmp_path}/in/*.parquet,{tmp_path}/in/*.warc.gz")
    kept = {d.id: d for d in _kept(f"{out}/phase1")}
    assert {kept["p0"].text, kept["p1"].text} == set(GOOD[:2])
    (warc_doc,) = [d for i, d in kept.items() if i not in ("p0", "p1")]
    # Trafilatura keeps the article's paragraphs and drops the navigation bar.
    assert warc_doc.metadata["url"] == "http://example.com/functions"
    assert warc_doc.text.split() == GOOD[2].split()
    assert manifest["kept"]["phase1"] == 3


def test_bad_arguments_are_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _run(tmp_path, "x", str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(ValueError, match="unknown input format"):
        prepare_pipeline.input_format("corpus.csv")
    with pytest.raises(ValueError, match="on_bad_record"):
        _run(tmp_path, "x", SHIPPED_WEB, on_bad_record="ignore")


def test_a_text_that_is_not_a_string_names_its_type(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "numbers.jsonl").write_text('{"text": 1234.5}\n')
    with pytest.raises(
        BadInputError,
        match=r"numbers\.jsonl: line 1: text_not_a_string: field 'text' is float 1234\.5$",
    ):
        list(iter_documents(str(tmp_path / "in" / "*.jsonl")))
    pq.write_table(pa.table({"text": [7]}), tmp_path / "in" / "numbers.parquet")
    reader = StrictParquetReader(str(tmp_path / "in"))
    with pytest.raises(
        BadInputError, match=r"numbers\.parquet: row 1: text_not_a_string: field 'text' is int 7$"
    ):
        list(reader.read_file("numbers.parquet"))


def test_a_directory_named_like_a_shard_is_an_error_before_anything_runs(tmp_path):
    (tmp_path / "in" / "x.jsonl").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"in/x\.jsonl: a directory, not a shard file"):
        _run(tmp_path, "out", str(tmp_path / "in" / "*"), on_bad_record="skip")
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_documents_over_max_document_bytes_are_dropped_before_any_filter_and_counted(tmp_path):
    big = "\n".join(GOOD) * 3  # about 4.7 KB, good text otherwise
    write_jsonl_zst(_records([*GOOD, big], "sized"), str(tmp_path / "in" / "sized.jsonl.zst"))
    out, manifest = _run(tmp_path, "out", str(tmp_path / "in" / "*"), max_document_bytes=4000)
    steps = manifest["steps"]["filter"]
    assert [s["step"].split(": ")[-1] for s in steps][:3] == [
        "🐿 Jsonl (strict)",
        "📏 Document size",
        "👯 Gopher Repetition",
    ]
    counts = _step(steps, "Document size")
    assert {k: counts[k] for k in ("total", "dropped", "dropped_too_large", "forwarded")} == {
        "total": 4,
        "dropped": 1,
        "dropped_too_large": 1,
        "forwarded": 3,
    }
    assert _step(steps, "Gopher Repetition")["total"] == 3  # the big one never reached it
    assert sorted(d.text for d in _kept(f"{out}/phase1")) == sorted(GOOD)
    assert manifest["settings"]["max_document_bytes"] == 4000


@pytest.mark.slow
def test_a_200_mb_document_is_dropped_in_seconds(tmp_path):
    huge = ("A sentence of an enormous dump that goes on. " * 4_500_000)[:200_000_000]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "huge.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in _records([*GOOD, huge], "huge"))
    started = time.monotonic()
    _, manifest = _run(tmp_path, "out", str(tmp_path / "in" / "*"))
    assert time.monotonic() - started < 120
    assert _step(manifest["steps"]["filter"], "Document size")["dropped_too_large"] == 1
    assert manifest["kept"]["phase1"] == len(GOOD)


def run_prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phi3_jax.data.prepare", f"--quality_model={QUALITY_MODEL}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_raise_mode_is_one_error_line_with_the_traceback_behind_verbose(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.jsonl").write_text('{"text": "fine"}\n{"text": ["a", "list"]}\n')
    args = (f"--input={tmp_path}/in/*", f"--output={tmp_path}/out")
    quiet = run_prepare_cli(*args)
    line = f"error: {tmp_path}/in/bad.jsonl: line 2: text_not_a_string: field 'text' is list ['a', 'list']"
    assert quiet.returncode == 1 and quiet.stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in quiet.stderr, quiet.stderr
    verbose = run_prepare_cli(*args, "--verbose")
    assert verbose.returncode == 1 and verbose.stderr.strip().splitlines()[-1] == line
    assert "Traceback (most recent call last)" in verbose.stderr
