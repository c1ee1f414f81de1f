"""The pre-tokenized ArrayRecord shards prepare writes beside the text: one record per document,
its ids as little-endian int32 without BOS or EOS, the documents passed on unchanged, and no
shard for a task that kept nothing."""

from __future__ import annotations

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader
from datatrove.data import Document

from phi3_jax.data import tokenizer as tokenizer_lib
from phi3_jax.data.writers import TokenizedArrayRecordWriter, token_record

TOKENIZER = ("sentencepiece", "data/tokenizer.model")


def test_token_record_is_little_endian_int32():
    assert token_record([1, 256, -1]) == b"\x01\x00\x00\x00\x00\x01\x00\x00\xff\xff\xff\xff"


def test_each_document_becomes_its_ids(tmp_path):
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(["Hello world.", "A second one."])]
    writer = TokenizedArrayRecordWriter(str(tmp_path / "tokens"), *TOKENIZER)
    passed = list(writer.run(iter(docs), rank=3))
    assert passed == docs
    reader = ArrayRecordReader(str(tmp_path / "tokens" / "00003.array_record"))
    records = reader.read(0, reader.num_records())
    reader.close()
    tokenizer = tokenizer_lib.load(*TOKENIZER)
    want = [tokenizer.encode(d.text) for d in docs]
    got = [np.frombuffer(r, "<i4").tolist() for r in records]
    assert got == want
    assert tokenizer.bos_id not in got[0] and tokenizer.eos_id not in got[0]


def test_a_task_that_keeps_nothing_writes_no_shard(tmp_path):
    writer = TokenizedArrayRecordWriter(str(tmp_path / "tokens"), *TOKENIZER)
    assert list(writer.run(iter([]))) == []
    assert not (tmp_path / "tokens").exists()
