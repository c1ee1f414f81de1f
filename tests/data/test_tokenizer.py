"""The bundled tokenizer: Phi-3 special tokens at their ids, lossless round trips, the train CLI."""

from __future__ import annotations

import pytest

from phi3_jax.data import tokenizer as tok_lib
from phi3_jax.data.shards import write_jsonl_zst

BUNDLED = "data/tokenizer.model"
PHI3_IDS = {
    "<|endoftext|>": 32000,
    "<|assistant|>": 32001,
    "<|placeholder1|>": 32002,
    "<|placeholder2|>": 32003,
    "<|placeholder3|>": 32004,
    "<|placeholder4|>": 32005,
    "<|system|>": 32006,
    "<|end|>": 32007,
    "<|placeholder5|>": 32008,
    "<|placeholder6|>": 32009,
    "<|user|>": 32010,
}
ROUND_TRIPS = [
    "",
    "Hello, world.",
    "digits 0123456789 and 3.14159e-10",
    "  leading spaces,\ttabs\t\tand   runs of    spaces  ",
    "\n\nblank lines\n\n\n  indented\n",
    "non-ASCII: café, naïve, Straße, 漢字, Ελληνικά, emoji 🙂🚀, \u200b zero width",
    "control \x00 \x1f bytes and a lone \ufffd",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>",
]


@pytest.fixture(scope="module")
def tok():
    return tok_lib.load_tokenizer(BUNDLED)


def test_special_tokens_sit_at_their_phi3_ids(tok):
    assert tok.num_pieces == 32000 and tok.vocab_size == 32064
    assert tok.special_ids == PHI3_IDS
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 32000, 32000, 0)
    for text, i in PHI3_IDS.items():
        assert tok.encode(text) == [i] and tok.decode([i]) == text


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_digits_are_split_and_unknown_characters_fall_back_to_bytes(tok):
    digit_ids = [i for i in tok.encode("x 9081726354") if tok.sp.IdToPiece(i).strip("▁").isdigit()]
    assert len(digit_ids) == 10
    pieces = [tok.sp.IdToPiece(i) for i in tok.encode("𝔘")]
    assert pieces[-4:] == ["<0xF0>", "<0x9D>", "<0x94>", "<0x98>"]


def test_padding_rows_do_not_decode(tok):
    with pytest.raises(ValueError, match="32011"):
        tok.decode([32011])


def test_train_cli_and_any_model_gets_the_specials_after_its_pieces(tmp_path):
    texts = [f"Line {i}: the quick brown fox jumps over {i * 7} lazy dogs." for i in range(300)]
    write_jsonl_zst([{"text": t} for t in texts], str(tmp_path / "in.jsonl.zst"))
    tok_lib.main(
        ["train", f"--input={tmp_path}/*.jsonl.zst", "--vocab_size=300", f"--out={tmp_path}/t"]
    )
    small = tok_lib.load_tokenizer(str(tmp_path / "t.model"))
    assert small.num_pieces == 300 and small.vocab_size == 320
    assert small.special_ids["<|endoftext|>"] == 300 and small.special_ids["<|user|>"] == 310
    assert small.decode(small.encode(texts[5] + "<|end|>")) == texts[5] + "<|end|>"
