"""What every tokenizer kind shares: the decodable mask and the ids outside it, a fingerprint
that changes with what defines the tokenizer and not with key order, and the HF directory."""

from __future__ import annotations

import json

import numpy as np

from phi3_jax.data import tokenizer_files


def test_decodable_mask_and_the_ids_outside_it():
    mask = tokenizer_files.decodable_mask([0, 2, 5, 9, -1], num_rows=6)
    assert mask.tolist() == [True, False, True, False, False, True]
    assert list(tokenizer_files.undecodable([0, 1, 2, 6, -3, 5], mask)) == [1, 6, -3]
    assert tokenizer_files.decodable_mask(np.array([], np.int64), 3).tolist() == [False] * 3


def test_fingerprint_follows_the_defining_parts_only():
    parts = {"kind": "tiktoken", "ranks": b"\x00\x01", "bos": 1}
    same = tokenizer_files.fingerprint(dict(reversed(list(parts.items()))))
    assert tokenizer_files.fingerprint(parts) == same
    assert len(same) == 64
    assert tokenizer_files.fingerprint(parts | {"ranks": b"\x00\x02"}) != same
    assert tokenizer_files.fingerprint(parts | {"bos": 2}) != same


def test_hf_directory(tmp_path):
    extra = tmp_path / "tokenizer.model"
    extra.write_bytes(b"model bytes")
    out = tmp_path / "out"
    config = {"bos_token": "<s>", "name": "é"}
    tokenizer_files.write_hf_directory(str(out), '{"version": "1.0"}', config, {"t.model": extra})
    assert json.loads((out / "tokenizer.json").read_text()) == {"version": "1.0"}
    assert json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8")) == config
    assert (out / "t.model").read_bytes() == b"model bytes"
