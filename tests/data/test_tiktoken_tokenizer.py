"""Phi-3-small's tiktoken tokenizer on a small ranks file written here: BPE merges, special
tokens, the 100352 vocabulary, the dummy ids the model masks, and bad ranks files."""

from __future__ import annotations

import base64

import pytest

from configs import phi3_small
from phi3_jax.data import tiktoken_tokenizer as tt

MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world"]


def write_ranks(path, tokens) -> str:
    path.write_bytes(
        b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in enumerate(tokens))
    )
    return str(path)


@pytest.fixture()
def tokenizer(tmp_path):
    ranks = [bytes([b]) for b in range(256)] + MERGES
    return tt.load_tiktoken_tokenizer(write_ranks(tmp_path / "ranks.tiktoken", ranks))


def test_bpe_merges_and_round_trip(tokenizer):
    assert tokenizer.encode("hello world") == [256 + MERGES.index(b"hello"), 256 + 8]
    assert tokenizer.encode("hi") == [ord("h"), ord("i")]
    text = "hello world, héllo!\n\tcode  = 1234"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens(tokenizer):
    ids = tokenizer.encode("<|user|>\nhello<|end|>\n<|assistant|>\n")
    assert ids == [100262, 10, 256 + 3, 100266, 10, 100263, 10]
    assert tokenizer.decode(ids) == "<|user|>\nhello<|end|>\n<|assistant|>\n"
    assert tokenizer.bos_id == tokenizer.eos_id == tokenizer.pad_id == 100257
    assert tokenizer.special_ids["<|system|>"] == 100261
    assert tokenizer.special_ids["<|dummy_id_86|>"] == 100351
    assert tokenizer.vocab_size == 100352


def test_masked_specials_are_encoded_as_text(tokenizer):
    """A literal "<|fim_prefix|>" or "<|dummy_id_3|>" in the data must not become its id: the
    model's logit there is -inf, so as a target it would make the loss infinite."""
    text = "<|fim_prefix|>x<|dummy_id_3|><|endoftext|>"
    ids = tokenizer.encode(text)
    assert ids[-1] == 100257
    assert all(i < 256 + len(MERGES) for i in ids[:-1])
    assert tokenizer.decode(ids) == text


def test_dummy_ids_are_those_the_model_masks():
    """HF's dummy_token_indices: every <|dummy_id_N|>, the FIM tokens and <|endofprompt|>."""
    ids = tt.PHI3_SMALL_DUMMY_TOKEN_IDS
    want = [100256, 100258, 100259, 100260, 100264, 100265, *range(100267, 100352)]
    assert list(ids) == want
    assert phi3_small.get_config().model.dummy_token_ids == ids
    assert len(tt.PHI3_SMALL_SPECIAL_TOKENS) == 100352 - 100256
    assert sorted(tt.PHI3_SMALL_SPECIAL_TOKENS.values()) == list(range(100256, 100352))


def test_unknown_id_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="id 200000 is neither"):
        tokenizer.decode([200000])


def test_bad_ranks_files(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(base64.b64encode(b"a") + b" 0\nnot-base64! 1\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2: not a 'base64 rank' line"):
        tt.load_tiktoken_tokenizer(str(bad))
    clash = tmp_path / "clash.tiktoken"
    clash.write_bytes(base64.b64encode(b"x") + b" 100261\n")  # <|system|>'s id
    with pytest.raises(ValueError, match="rank 100261 is also a special token id"):
        tt.load_tiktoken_tokenizer(str(clash))
