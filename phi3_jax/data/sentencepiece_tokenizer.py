"""Kind sentencepiece: a Llama-style `.model` with Phi-3's added tokens after its pieces, its ids
those of the `tokenizer.json` beside it (transformers' conversion; see phi3_jax.data.tokenizer),
and training such a model."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import sentencepiece as spm
import tokenizers

from phi3_jax.data.hf_tokenizer import (
    Tokenizer,
    from_backend,
    read_tokenizer_json,
    transformers_backend,
)
from phi3_jax.errors import BadInputError

# Phi-3's added tokens in id order, starting right after the sentencepiece pieces.
PHI3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
)


def _added_token(content: str, *, rstrip: bool, special: bool = True) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": rstrip,
        "single_word": False,
        "special": special,
    }


def phi3_tokenizer_config(sp: spm.SentencePieceProcessor) -> dict:
    """tokenizer_config.json of a sentencepiece model with Phi-3's added tokens after its pieces.

    The flags are those of Phi-3's released tokenizer (legacy=False, no BOS added): every added
    token but <|endoftext|> has rstrip=True, so whitespace right after it (the "\\n" of
    "<|user|>\\n") belongs to the token and does not come back from decode.
    """
    n = sp.GetPieceSize()
    unk, bos, eos = (sp.IdToPiece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()))
    added = {
        sp.unk_id(): _added_token(unk, rstrip=False),
        sp.bos_id(): _added_token(bos, rstrip=False),
        sp.eos_id(): _added_token(eos, rstrip=True, special=False),
    }
    for k, token in enumerate(PHI3_SPECIAL_TOKENS):
        added[n + k] = _added_token(token, rstrip=token != "<|endoftext|>")
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "bos_token": bos,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": unk,
        "added_tokens_decoder": {str(i): t for i, t in sorted(added.items())},
    }


def converted_sentencepiece(model_path: str) -> tokenizers.Tokenizer:
    """transformers' conversion of a sentencepiece model with Phi-3's added tokens."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    with tempfile.TemporaryDirectory() as directory:
        os.symlink(os.path.abspath(model_path), os.path.join(directory, "tokenizer.model"))
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(phi3_tokenizer_config(sp), f)
        return transformers_backend(directory)


def _check_same_pieces(
    sp: spm.SentencePieceProcessor, backend: tokenizers.Tokenizer, json_path: str, model_path: str
) -> None:
    for i in range(sp.GetPieceSize()):
        if backend.id_to_token(i) != sp.IdToPiece(i):
            raise BadInputError(
                f"{json_path}: does not belong to {model_path} (id {i} is "
                f"{backend.id_to_token(i)!r} there, {sp.IdToPiece(i)!r} in the model); rewrite it "
                f"with `python -m phi3_jax.data.tokenizer convert --model={model_path}`"
            )


def sentencepiece_json_path(model_path: str) -> str:
    """Where the tokenizer.json of a sentencepiece model lives: beside it, `PREFIX.json`."""
    return os.path.splitext(model_path)[0] + ".json"


def load_sentencepiece(path: str) -> Tokenizer:
    """A sentencepiece model (file, or directory with tokenizer.model) with Phi-3's added tokens."""
    model_path = os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path
    if not os.path.isfile(model_path):
        raise BadInputError(f"{model_path}: no such sentencepiece model")
    sp = spm.SentencePieceProcessor(model_file=model_path)
    json_path = sentencepiece_json_path(model_path)
    if os.path.isfile(json_path):
        backend = read_tokenizer_json(json_path)
        _check_same_pieces(sp, backend, json_path, model_path)
    else:
        backend = converted_sentencepiece(model_path)
    config = phi3_tokenizer_config(sp)
    return from_backend(backend, config, model_path, {"tokenizer.model": model_path})


def train_sentencepiece(
    sentences: Iterator[str], vocab_size: int, out_prefix: str, max_sentence_length: int = 16384
) -> str:
    """Train a Llama-style BPE (byte fallback, split digits, identity normalisation); return the path."""
    spm.SentencePieceTrainer.Train(
        sentence_iterator=sentences,
        model_prefix=out_prefix,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        # Keep whitespace runs (indentation in code) as they are, so decode(encode(x)) == x.
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        character_coverage=0.99995,
        max_sentence_length=max_sentence_length,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        # Deterministic across machines: one thread, no sampling of the input.
        num_threads=1,
        input_sentence_size=0,
        minloglevel=2,
    )
    return out_prefix + ".model"


def write_sentencepiece_json(model_path: str) -> str:
    """Write `PREFIX.json`, transformers' conversion of `PREFIX.model`; returns its path."""
    path = sentencepiece_json_path(model_path)
    converted_sentencepiece(model_path).save(path, pretty=False)
    return path
