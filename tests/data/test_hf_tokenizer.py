"""Our tokenizer against transformers, the source of truth for its ids: on the bundled
data/tokenizer.model and the real Llama-2 one (Phi-3-mini's pieces), with Phi-3's added tokens,
`load_tokenizer` gives the ids and the text of `transformers.AutoTokenizer` loaded from the
Hugging Face directory (tokenizer.model + Phi-3's tokenizer_config.json) and from the directory
`save_hf` writes; `decodable_mask` is False exactly where decode fails."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from shard_fixtures import bundled_texts, tokenizer_config

from phi3_jax.data.tokenizer import load_tokenizer
from tests.posttrain.phi3_tokenizer_fixtures import LLAMA2_TOKENIZER, write_phi3_tokenizer_dir

transformers = pytest.importorskip("transformers")

MODELS = {"bundled": "data/tokenizer.model", "llama2": LLAMA2_TOKENIZER}
TEXTS = [
    "Hello world!  Two",
    "double  spaces,   triple   and\ttabs\t\tmixed \t here  ",
    "trailing spaces   \nand a line of spaces\n      \n",
    "def f(x):\n    if x:\n        return [i ** 2 for i in range(x)]  # squares\n\treturn None\n",
    "class A:\r\n    pass\r\n\r\n",
    "non-ASCII: café, naïve, Straße, 漢字かな, Ελληνικά, עברית, emoji 🙂🚀👩‍💻, \u200b zero width",
    "combining e\u0301 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, control \x00 \x1f, \ufffd",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>",
    "a<|user|> b<|end|>  c<|endoftext|> d <|system|>\t<|placeholder3|><|placeholder3|>x",
    "<s> and </s> and <unk> as text, <|notatoken|>",
    "  leading spaces",
    " one leading space",
    "digits 0123456789 and 3.14159e-10, 1,000,000",
    "",
]


@pytest.fixture(scope="module", params=sorted(MODELS))
def pair(request, tmp_path_factory):
    """(ours by kind, transformers' tokenizers by directory) of one tokenizer.model."""
    model = MODELS[request.param]
    hf_style = write_phi3_tokenizer_dir(str(tmp_path_factory.mktemp("hf_style")), model)
    ours = {
        "sentencepiece": load_tokenizer(tokenizer_config("sentencepiece", model)),
        "hf": load_tokenizer(tokenizer_config("hf", hf_style)),
    }
    saved = str(tmp_path_factory.mktemp("saved"))
    ours["sentencepiece"].save_hf(saved)
    ours["hf_saved"] = load_tokenizer(tokenizer_config("hf", saved))
    ours["sentencepiece_dir"] = load_tokenizer(tokenizer_config("sentencepiece", saved))
    references = {
        "hf_style": transformers.AutoTokenizer.from_pretrained(hf_style),
        "save_hf": transformers.AutoTokenizer.from_pretrained(saved),
    }
    return ours, references


def reference_ids(reference, texts: list[str]) -> list[list[int]]:
    return reference(texts, add_special_tokens=False).input_ids


def test_ids_equal_transformers(pair):
    ours, references = pair
    texts = TEXTS + bundled_texts(200)
    for name, reference in references.items():
        want = reference_ids(reference, texts)
        for kind, tokenizer in ours.items():
            for text, ids in zip(texts, want, strict=True):
                assert tokenizer.encode(text) == ids, (name, kind, text[:200])


def test_decode_equals_transformers_and_round_trips(pair):
    ours, references = pair
    tokenizer = ours["sentencepiece"]
    for reference in references.values():
        for text in TEXTS + bundled_texts(50):
            ids = tokenizer.encode(text)
            assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=False)
    # What transformers' tokenizer keeps: no leading space (sentencepiece's dummy prefix) and no
    # whitespace after Phi-3's rstrip tokens (every added token but <|endoftext|>).
    for text in TEXTS[:7] + TEXTS[12:] + bundled_texts(200):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids_and_vocabulary_agree_across_kinds(pair):
    ours, references = pair
    want = references["hf_style"]
    for tokenizer in ours.values():
        assert tokenizer.vocab_size == 32064
        assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
            want.bos_token_id,
            want.eos_token_id,
            want.pad_token_id,
        )
        assert tokenizer.special_ids == {
            t.content: i for i, t in want.added_tokens_decoder.items() if i >= 32000
        }
        assert list(tokenizer.special_ids.values()) == list(range(32000, 32011))
    fingerprints = {kind: tokenizer.fingerprint for kind, tokenizer in ours.items()}
    assert len(set(fingerprints.values())) == 1, fingerprints
    assert len(fingerprints["hf"]) == 64


def test_fingerprints_tell_tokenizers_apart():
    prints = {
        name: load_tokenizer(tokenizer_config("sentencepiece", model)).fingerprint
        for name, model in MODELS.items()
    }
    assert prints["bundled"] != prints["llama2"]


def test_decodable_mask_is_false_exactly_where_decode_fails(pair):
    ours, references = pair
    reference = references["save_hf"]
    for tokenizer in ours.values():
        mask = tokenizer.decodable_mask(32064 + 8)
        assert mask[:32011].all() and not mask[32011:].any()
        for i in np.flatnonzero(mask):
            assert tokenizer.decode([i]) == reference.decode([int(i)], skip_special_tokens=False)
        for i in np.flatnonzero(~mask):
            with pytest.raises(ValueError, match=f"id {i} is neither"):
                tokenizer.decode([5, i])


def test_the_issue_example_follows_transformers_not_sentencepiece():
    """Llama-2's model: sentencepiece splits the "  Two" of "world!  Two" as 29871,7803 (a lone
    "▁", then "▁Two"); transformers, and so we, as 259,13985 ("▁▁", "Two")."""
    text = "Hello world!  Two"
    plain = spm.SentencePieceProcessor(model_file=LLAMA2_TOKENIZER).EncodeAsIds(text)
    ours = load_tokenizer(tokenizer_config("sentencepiece", LLAMA2_TOKENIZER)).encode(text)
    assert plain[-2:] == [29871, 7803]
    assert ours[-2:] == [259, 13985]
    assert ours[:-2] == plain[:-2]
