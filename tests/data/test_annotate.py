"""phi3_jax.data.annotate through datatrove's InferenceRunner: end to end on our own server (every
sampled document accounted for: scored, unparseable or failed), and against a scripted server
whose answers are scores, rambling, garbage bodies and 500s (retried with backoff, then counted);
`quality train --score_threshold` turns the scores into hq/lq labels."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from aiohttp import web

from phi3_jax.data import annotate, quality
from phi3_jax.data.shards import write_jsonl_zst
from phi3_jax.serve.background import BackgroundServer
from tests.data.scripted_server import chat_app
from tests.data.test_prepare import GOOD
from tests.serve.serve_fixtures import MODEL, served


def test_parse_score_reads_the_last_score_line_or_nothing():
    assert annotate.parse_score("Clear.\nEducational score: 4") == 4
    assert annotate.parse_score("Educational score: 2 ... no, Educational Score: **3**") == 3
    assert annotate.parse_score("I would give it 4 points.") is None
    assert annotate.parse_score("Educational score: 7") is None
    assert annotate.parse_score("Educational score: 3.5") is None
    assert annotate.parse_score("") is None


def _shards(tmp_path, records) -> str:
    write_jsonl_zst(records, str(tmp_path / "in" / "web.jsonl.zst"))
    return str(tmp_path / "in" / "*.jsonl.zst")


def test_end_to_end_on_our_server(tmp_path):
    records = [{"id": f"doc/{i}", "text": f"{GOOD[i % 3]} Example {i}."} for i in range(30)]
    with served(context=1024) as (url, engine):
        summary = annotate.run(
            _shards(tmp_path, records),
            str(tmp_path / "out"),
            endpoint=url,
            sample=20,
            max_doc_chars=400,
            max_tokens=8,
        )
    assert summary["sampled"] == 20
    # A random tiny model never writes the score line: every answer is counted, none guessed.
    assert summary["scored"] + summary["unparseable"] + summary["failed"] == 20
    assert summary["failed"] == 0 and engine.counters.rows == 20
    assert summary["annotation"]["model"] == MODEL
    assert summary["annotation"]["prompt_version"] == annotate.PROMPT_VERSION
    labels = (tmp_path / "out" / "labels.jsonl").read_bytes().splitlines()
    assert len(labels) == summary["scored"]
    # The same seed samples the same documents.
    again = annotate.sample_documents(_shards(tmp_path, records), 20, 0)
    assert sorted(d.id for d in again) == sorted(
        json.loads(line)["id"]
        for line in (tmp_path / "out" / "judgements" / "00000.jsonl").read_text().splitlines()
    )


def scripted_app(calls: dict) -> web.Application:
    """Answers by the document's kind (the word after 'Kind:'): a score, rambling, a garbage
    body, a 500 on the first call only, or always a 500."""

    def respond(body: dict):
        text = body["messages"][0]["content"]
        kind, n = re.search(r"Kind: (\w+) (\d)", text).groups()
        calls[kind] = calls.get(kind, 0) + 1
        if kind == "dead" or (kind == "flaky" and calls[kind] == 1):
            return web.Response(status=500, text="overloaded")
        if kind == "garbage":
            return web.Response(status=200, text="<html>not json")
        answer = "It rambles." if kind == "rambling" else f"Fine.\nEducational score: {n}"
        return answer, "stop"

    return chat_app(respond)


def test_failures_are_retried_then_counted_and_scores_become_labels(tmp_path):
    kinds = ["good 4", "good 1", "good 5", "flaky 3", "rambling 0", "garbage 0", "dead 0"]
    records = [{"id": k, "text": f"Kind: {k} of page."} for k in kinds]
    calls: dict = {}
    with BackgroundServer(scripted_app(calls)) as url:
        summary = annotate.run(
            _shards(tmp_path, records),
            str(tmp_path / "out"),
            endpoint=url,
            sample=10,
            retries=2,
            backoff_s=0.01,
        )
    assert summary["sampled"] == 7
    assert (summary["scored"], summary["unparseable"], summary["failed"]) == (4, 1, 2)
    assert summary["scores"] == {"0": 0, "1": 1, "2": 0, "3": 1, "4": 1, "5": 1}
    assert calls["flaky"] == 2 and calls["dead"] == 3 and calls["garbage"] == 3
    path = str(tmp_path / "out" / "labels.jsonl")
    scored = {r["id"]: r["score"] for r in map(orjson.loads, open(path, "rb"))}
    assert scored == {"good 4": 4, "good 1": 1, "good 5": 5, "flaky 3": 3}
    labelled = {r["id"]: r["label"] for r in quality.read_labelled(path, score_threshold=3)}
    assert labelled == {"good 4": "hq", "good 1": "lq", "good 5": "hq", "flaky 3": "hq"}
    with pytest.raises(ValueError, match="line 1: need a numeric score"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "x", "label": "hq"}\n')
        quality.read_labelled(str(bad), score_threshold=3)


def test_quality_train_refuses_scores_that_give_one_label_only(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a b c", "score": 4}\n{"text": "d e f", "score": 5}\n')
    with pytest.raises(SystemExit, match="need records of both labels"):
        quality.main(
            ["train", f"--labelled={path}", "--score_threshold=3", f"--out={tmp_path / 'm.bin'}"]
        )
