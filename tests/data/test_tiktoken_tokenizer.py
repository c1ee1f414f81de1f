"""Phi-3-small's tiktoken tokenizer on a small ranks file written here: BPE merges, special
tokens in Phi-3-small's layout after the ranks, the dummy ids the model masks (neither encoded nor
decoded), and bad ranks files."""

from __future__ import annotations

import base64
import os

import numpy as np
import pytest
from shard_fixtures import bundled_texts, tokenizer_config

from configs import phi3_small
from phi3_jax import vocab
from phi3_jax.data import tiktoken_tokenizer as tt
from phi3_jax.data import tokenizer as tokenizer_lib
from phi3_jax.data.shards import write_jsonl_zst

MERGES = [b"he", b"ll", b"hell", b"hello", b" w", b"or", b" wor", b"ld", b" world"]
NUM_RANKS = 256 + len(MERGES)
# Phi-3-small's ids, shifted from cl100k's 100256 ranks to these NUM_RANKS.
SHIFT = NUM_RANKS - 100256


def load_small(path: str):
    return tokenizer_lib.load_tokenizer(tokenizer_config("tiktoken", path))


def write_ranks(path, tokens) -> str:
    tt.write_ranks({t: r for r, t in enumerate(tokens)}, str(path))
    return str(path)


@pytest.fixture()
def tokenizer(tmp_path):
    ranks = [bytes([b]) for b in range(256)] + MERGES
    return load_small(write_ranks(tmp_path / "ranks.tiktoken", ranks))


def test_bpe_merges_and_round_trip(tokenizer):
    assert tokenizer.encode("hello world") == [256 + MERGES.index(b"hello"), 256 + 8]
    assert tokenizer.encode("hi") == [ord("h"), ord("i")]
    text = "hello world, héllo!\n\tcode  = 1234"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens(tokenizer):
    ids = tokenizer.encode("<|user|>\nhello<|end|>\n<|assistant|>\n")
    assert ids == [100262 + SHIFT, 10, 256 + 3, 100266 + SHIFT, 10, 100263 + SHIFT, 10]
    assert tokenizer.decode(ids) == "<|user|>\nhello<|end|>\n<|assistant|>\n"
    assert tokenizer.bos_id == tokenizer.eos_id == tokenizer.pad_id == 100257 + SHIFT
    assert tokenizer.special_ids["<|system|>"] == 100261 + SHIFT
    assert "<|dummy_id_86|>" not in tokenizer.special_ids
    assert tokenizer.vocab_size == NUM_RANKS + 96


def test_decodable_mask_is_false_exactly_where_decode_fails(tokenizer):
    mask = tokenizer.decodable_mask(tokenizer.vocab_size + 4)
    for i, decodable in enumerate(mask):
        if decodable:
            tokenizer.decode([i])
        else:
            with pytest.raises(ValueError, match=f"id {i} is neither"):
                tokenizer.decode([i])
    masked = np.flatnonzero(~mask[: tokenizer.vocab_size])
    assert masked.tolist() == list(vocab.phi3_small_dummy_ids(NUM_RANKS))


def test_masked_specials_are_encoded_as_text(tokenizer):
    """A literal "<|fim_prefix|>" or "<|dummy_id_3|>" in the data must not become its id: the
    model's logit there is -inf, so as a target it would make the loss infinite."""
    text = "<|fim_prefix|>x<|dummy_id_3|><|endoftext|>"
    ids = tokenizer.encode(text)
    assert ids[-1] == 100257 + SHIFT
    assert all(i < 256 + len(MERGES) for i in ids[:-1])
    assert tokenizer.decode(ids) == text


def test_dummy_ids_are_those_the_model_masks():
    """HF's dummy_token_indices: every <|dummy_id_N|>, the FIM tokens and <|endofprompt|>."""
    ids = vocab.PHI3_SMALL_DUMMY_TOKEN_IDS
    want = [100256, 100258, 100259, 100260, 100264, 100265, *range(100267, 100352)]
    assert list(ids) == want
    assert phi3_small.get_config().model.dummy_token_ids == ids
    assert len(vocab.PHI3_SMALL_SPECIAL_TOKENS) == 100352 - 100256
    assert sorted(vocab.PHI3_SMALL_SPECIAL_TOKENS.values()) == list(range(100256, 100352))


def test_unknown_id_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="id 200000 is neither"):
        tokenizer.decode([200000])


def test_bad_ranks_files(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(base64.b64encode(b"a") + b" 0\nnot-base64! 1\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2: not a 'base64 rank' line"):
        load_small(str(bad))
    gap = tmp_path / "gap.tiktoken"
    gap.write_bytes(base64.b64encode(b"x") + b" 0\n" + base64.b64encode(b"y") + b" 100261\n")
    with pytest.raises(ValueError, match=r"gap\.tiktoken: ranks must be 0\.\.1, each once"):
        load_small(str(gap))


SHIPPED = "data/tokenizer_small.tiktoken"
TEXTS = [
    "hello world, héllo!\n\tcode  = 1234",
    "def f(x):\n    return x ** 2  # square\n\n\n    \n",
    "it's 'quoted', we'll   see; 漢字 🙂🚀 naïve \u200b\r\n",
    "<|user|>\nhi<|end|>\n<|assistant|>\nok<|end|><|endoftext|><|dummy_id_5|><|fim_prefix|>",
    "",
]


def test_shipped_ranks_file_is_in_tiktokens_format():
    """tiktoken's own reader gives the same ranks; 416 ranks and the 96 ids after them."""
    from tiktoken.load import load_tiktoken_bpe

    assert os.path.getsize(SHIPPED) < 1_000_000
    assert tt.load_ranks(SHIPPED) == load_tiktoken_bpe(SHIPPED)
    tokenizer = load_small(SHIPPED)
    assert (tokenizer.num_ranks, tokenizer.vocab_size, tokenizer.eos_id) == (416, 512, 417)
    tiny = phi3_small.get_config("tiny")
    assert (tiny.data.tokenizer.kind, tiny.data.tokenizer.path) == ("tiktoken", SHIPPED)
    assert tiny.model.vocab_size == tokenizer.vocab_size
    assert tiny.model.dummy_token_ids == vocab.phi3_small_dummy_ids(416)
    assert tiny.model.eos_token_id == tokenizer.eos_id


@pytest.mark.parametrize("ranks", ["shipped", "merges"])
def test_hugging_face_export_gives_the_tiktoken_ids(ranks, tokenizer, tmp_path):
    """save_hf's tokenizer.json (transformers' TikTokenConverter + the specials) in
    transformers' AutoTokenizer: the ids and text of tiktoken."""
    transformers = pytest.importorskip("transformers")
    ours = load_small(SHIPPED) if ranks == "shipped" else tokenizer
    ours.save_hf(str(tmp_path))
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    texts = TEXTS + bundled_texts(100)
    want = reference(texts, add_special_tokens=False).input_ids
    for text, ids in zip(texts, want, strict=True):
        assert ours.encode(text) == ids, text[:200]
        assert reference.decode(ids) == ours.decode(ids) == text
    assert reference.eos_token_id == reference.pad_token_id == ours.eos_id
    for i in np.flatnonzero(ours.decodable_mask(ours.vocab_size)):
        assert reference.decode([int(i)]) == ours.decode([i])
    # The exported directory loads back as kind hf with the same ids and specials.
    back = tokenizer_lib.load_tokenizer(tokenizer_config("hf", str(tmp_path)))
    assert back.special_ids == ours.special_ids
    assert (back.bos_id, back.eos_id, back.pad_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    assert [back.encode(text) for text in texts] == want
    np.testing.assert_array_equal(
        back.decodable_mask(ours.vocab_size), ours.decodable_mask(ours.vocab_size)
    )


def test_train_tiktoken_cli(tmp_path):
    texts = [f"Line {i}: the quick brown fox jumps over {i * 7} lazy dogs." for i in range(300)]
    write_jsonl_zst([{"text": t} for t in texts], str(tmp_path / "in.jsonl.zst"))
    out = str(tmp_path / "ranks.tiktoken")
    tokenizer_lib.main(
        ["train_tiktoken", f"--input={tmp_path}/*.jsonl.zst", "--num_ranks=300", f"--out={out}"]
    )
    tokenizer = load_small(out)
    assert tokenizer.num_ranks == 300 and tokenizer.vocab_size == 396
    ids = tokenizer.encode(texts[5] + "<|end|>")
    assert max(ids[:-1]) >= 256  # merges are used
    assert tokenizer.decode(ids) == texts[5] + "<|end|>"
