"""The bundled tokenizer: Phi-3 special tokens at their ids, lossless round trips, the train CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from shard_fixtures import tokenizer_config

from phi3_jax import config as config_lib
from phi3_jax.data import sentencepiece_tokenizer as sp_lib
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
    "leading text,\ttabs\t\tand   runs of    spaces  ",
    "\n\nblank lines\n\n\n  indented\n",
    "non-ASCII: café, naïve, Straße, 漢字, Ελληνικά, emoji 🙂🚀, \u200b zero width",
    "control \x00 \x1f bytes and a lone \ufffd",
    "<|user|>What is 2+2?<|end|><|assistant|>4<|end|><|endoftext|>",
]
# Where the Hugging Face tokenizer (the ids of record) loses text, decode gives what it gives: a
# leading space of the text is the sentencepiece dummy prefix, and whitespace right after an
# rstrip special token (all of Phi-3's but <|endoftext|>) belongs to the token.
LOSSY = {
    "  leading spaces": " leading spaces",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>\n": (
        "<|user|>What is 2+2?<|end|><|assistant|>4<|end|><|endoftext|>\n"
    ),
}


@pytest.fixture(scope="module")
def tok():
    return tok_lib.load_tokenizer(tokenizer_config("sentencepiece", BUNDLED))


def test_special_tokens_sit_at_their_phi3_ids(tok):
    assert tok.num_pieces == 32000 and tok.vocab_size == 32064
    assert tok.special_ids == PHI3_IDS
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 32000, 32000)
    for text, i in PHI3_IDS.items():
        assert tok.encode(text) == [i] and tok.decode([i]) == text


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@pytest.mark.parametrize("text", LOSSY)
def test_what_the_hf_tokenizer_loses(tok, text):
    assert tok.decode(tok.encode(text)) == LOSSY[text]


def test_digits_are_split_and_unknown_characters_fall_back_to_bytes(tok):
    piece = tok.backend.id_to_token
    digit_ids = [i for i in tok.encode("x 9081726354") if piece(i).strip("▁").isdigit()]
    assert len(digit_ids) == 10
    pieces = [piece(i) for i in tok.encode("𝔘")]
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
    small = tok_lib.load_tokenizer(tokenizer_config("sentencepiece", str(tmp_path / "t.model")))
    assert small.num_pieces == 300 and small.vocab_size == 320
    assert small.special_ids["<|endoftext|>"] == 300 and small.special_ids["<|user|>"] == 310
    assert small.decode(small.encode(texts[5] + "<|end|>")) == texts[5] + "<|end|>"


def test_a_saved_config_with_the_removed_key_is_a_clear_error():
    saved = json.loads(config_lib.to_json(config_lib.default_config()))
    del saved["data"]["tokenizer"]
    saved["data"]["tokenizer_path"] = "data/tokenizer.model"
    with pytest.raises(
        config_lib.ConfigError,
        match=r"^data\.tokenizer_path='data/tokenizer\.model'"
        r": removed; name the tokenizer with data\.tokenizer\.kind",
    ):
        config_lib.from_json(json.dumps(saved))


@pytest.mark.parametrize(
    "kind, path, message",
    [
        ("sentencepiece", "nope.model", r"nope\.model: no such sentencepiece model"),
        ("hf", "data/raw", r"data/raw: no tokenizer\.json, nor a tokenizer\.model"),
        ("tiktoken", "nope.tiktoken", r"nope\.tiktoken: no such tiktoken ranks file"),
    ],
)
def test_a_missing_tokenizer_names_the_key_and_file(kind, path, message):
    with pytest.raises(
        config_lib.ConfigError,
        match=rf"^data\.tokenizer\.path='{path}' "
        rf"\(kind {kind}\): {message}",
    ):
        tok_lib.load_tokenizer(tokenizer_config(kind, path))


def test_a_tokenizer_json_of_another_model_is_refused(tmp_path):
    texts = [f"Line {i}: other words entirely, {i * 3} of them." for i in range(300)]
    other = sp_lib.train_sentencepiece(iter(texts), 300, str(tmp_path / "other"))
    shutil.copyfile(BUNDLED.replace(".model", ".json"), tmp_path / "other.json")
    with pytest.raises(
        config_lib.ConfigError, match=r"other\.json: does not belong to .*other\.model"
    ):
        tok_lib.load_tokenizer(tokenizer_config("sentencepiece", other))


def test_a_malformed_tokenizer_json_names_the_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("garbage")
    with pytest.raises(config_lib.ConfigError, match=r"tokenizer\.json: not a tokenizer\.json \("):
        tok_lib.load_tokenizer(tokenizer_config("hf", str(tmp_path)))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("hf", r"data/tokenizer\.model: not a tokenizer\.json \("),
        ("tiktoken", r"data/tokenizer\.model:\d+: not a 'base64 rank' line: b'"),
    ],
)
def test_a_file_of_another_kind_names_it(kind, message):
    with pytest.raises(config_lib.ConfigError, match=message) as error:
        tok_lib.load_tokenizer(tokenizer_config(kind, BUNDLED))
    assert "\n" not in str(error.value) and len(str(error.value)) < 300
