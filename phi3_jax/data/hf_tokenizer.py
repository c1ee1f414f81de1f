"""The Hugging Face `tokenizers` tokenizer behind kinds sentencepiece and hf: the `Tokenizer` and
how it is read from a tokenizer.json or a Hugging Face tokenizer directory (`load_hf`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable

import numpy as np
import tokenizers

from phi3_jax.data import tokenizer_files
from phi3_jax.errors import BadInputError

# Embedding rows are padded to a multiple of this (32011 -> 32064 for Phi-3).
VOCAB_MULTIPLE = 64


def padded_vocab_size(num_ids: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """The embedding vocabulary: `num_ids` rounded up to a multiple of `multiple`."""
    return -(-num_ids // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A Hugging Face `tokenizers` tokenizer (kinds sentencepiece and hf)."""

    backend: tokenizers.Tokenizer
    # Added tokens above the model's own vocabulary, e.g. {"<|endoftext|>": 32000, ...}.
    special_ids: dict[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    # Embedding rows (a multiple of 64, above every id this tokenizer returns).
    vocab_size: int
    # The tokenizer_config.json that save_hf writes beside tokenizer.json.
    hf_config: dict
    # Files save_hf copies too (name in the directory -> path), e.g. the tokenizer.model.
    extra_files: dict[str, str] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def _known(self) -> np.ndarray:
        ids = self.backend.get_vocab(with_added_tokens=True).values()
        return tokenizer_files.decodable_mask(ids, max(ids) + 1)

    @property
    def num_pieces(self) -> int:
        """Tokens of the model itself (sentencepiece: its pieces), without the added tokens."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; added-token strings in it become their single ids."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids become their strings, an id with no token is an error."""
        ids = [int(i) for i in ids]
        for i in tokenizer_files.undecodable(ids, self._known):
            raise ValueError(f"id {i} is neither a piece nor a special token")
        return self.backend.decode(ids, skip_special_tokens=False)

    def decodable_mask(self, num_rows: int) -> np.ndarray:
        """[num_rows] bool: True for the ids decode accepts (False for the padding rows)."""
        return tokenizer_files.decodable_mask(np.flatnonzero(self._known), num_rows)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json (canonical form) and the special ids."""
        return tokenizer_files.fingerprint(
            {
                "tokenizer.json": self.backend.to_str().encode(),
                "special_ids": self.special_ids,
                "bos_eos_pad": [self.bos_id, self.eos_id, self.pad_id],
            }
        )

    def save_hf(self, out_dir: str) -> None:
        """A directory from which `transformers.AutoTokenizer` gives exactly these ids."""
        tokenizer_files.write_hf_directory(
            out_dir, self.backend.to_str(pretty=True), self.hf_config, self.extra_files
        )


def _token_name(config: dict, key: str) -> str | None:
    value = config.get(key)
    return value.get("content") if isinstance(value, dict) else value


def read_tokenizer_json(path: str) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the tokenizers library raises a bare Exception
        raise BadInputError(f"{path}: not a tokenizer.json ({error})") from None


def from_backend(
    backend: tokenizers.Tokenizer, hf_config: dict, source: str, extra_files: dict[str, str]
) -> Tokenizer:
    """bos/eos/pad by the names in `hf_config` (none: Phi-3's); no bos or pad: the eos."""
    added = backend.get_added_tokens_decoder()
    # The model's own tokens: its vocabulary but the added tokens in it (Llama's <unk>, <s>, </s>
    # at 0-2; an exported tiktoken's specials, kept at their ids there).
    model_vocab = backend.get_vocab(with_added_tokens=False)
    base = len(model_vocab) - sum(t.content in model_vocab for t in added.values())
    names = hf_config or {"eos_token": "<|endoftext|>", "bos_token": "<s>"}
    ids = {}
    for key in ("eos_token", "bos_token", "pad_token"):
        name = _token_name(names, key)
        if name is None:
            continue
        ids[key] = backend.token_to_id(name)
        if ids[key] is None:
            raise BadInputError(f"{source}: {key}={name!r} is not a token of the tokenizer")
    if "eos_token" not in ids:
        raise BadInputError(f"{source}: its tokenizer_config.json names no eos_token")
    eos = ids["eos_token"]
    top = max(backend.get_vocab(with_added_tokens=True).values())
    return Tokenizer(
        backend=backend,
        special_ids={t.content: i for i, t in sorted(added.items()) if i >= base},
        bos_id=ids.get("bos_token", eos),
        eos_id=eos,
        pad_id=ids.get("pad_token", eos),
        vocab_size=padded_vocab_size(top + 1),
        hf_config=hf_config,
        extra_files=extra_files,
    )


def transformers_backend(directory: str) -> tokenizers.Tokenizer:
    """What transformers' AutoTokenizer builds from a tokenizer.model + tokenizer_config.json."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BadInputError(
            f"{directory}: has no tokenizer.json, and converting its tokenizer.model needs "
            "transformers (pip install transformers, or write it with `python -m "
            "phi3_jax.data.tokenizer convert`)"
        ) from None
    backend = AutoTokenizer.from_pretrained(directory).backend_tokenizer
    with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
        added = json.load(f).get("added_tokens_decoder", {})
    for i, token in added.items():
        if backend.token_to_id(token["content"]) != int(i):
            raise BadInputError(
                f"{directory}/tokenizer_config.json: added token {token['content']!r} should be "
                f"id {i} but transformers gives {backend.token_to_id(token['content'])} (ids of "
                "added tokens must follow the vocabulary without gaps)"
            )
    return backend


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise BadInputError(f"{path}: not JSON ({error})") from None


def load_hf(path: str) -> Tokenizer:
    """A Hugging Face tokenizer directory, or a tokenizer.json file."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    model_path = os.path.join(directory, "tokenizer.model")
    extra = {"tokenizer.model": model_path} if os.path.isfile(model_path) else {}
    if os.path.isfile(json_path):
        backend = read_tokenizer_json(json_path)
    elif extra and config:
        backend = transformers_backend(directory)
    else:
        raise BadInputError(
            f"{path}: no tokenizer.json, nor a tokenizer.model with its tokenizer_config.json"
        )
    return from_backend(backend, config, path, extra)
