"""The run's tokenizer: `load_tokenizer(config)` reads `config.data.tokenizer` (kind, path).

The ids of record are those of the Hugging Face tokenizer, what `transformers.AutoTokenizer` gives
and an exported model is served with. Plain sentencepiece splits some text differently (runs of
spaces after text, what follows a special token), so sentencepiece only trains models here.

Kinds:
- `sentencepiece`: a Llama-style `.model` (or a directory holding `tokenizer.model`). Phi-3's added
  tokens follow its pieces, with the flags of Phi-3's released tokenizer_config.json (so on a
  32000-piece model `<|endoftext|>` is 32000 and `<|user|>` 32010); the embedding vocabulary is
  rounded up to a multiple of 64 (32064). Its ids come from the `tokenizer.json` beside the model
  (`data/tokenizer.json` for `data/tokenizer.model`; `tokenizer train` and `tokenizer convert`
  write it with transformers' converter), checked to hold the model's pieces. Without that file,
  transformers converts the model on load (transformers must then be installed).
- `hf`: a Hugging Face tokenizer directory, or its `tokenizer.json`: read with the `tokenizers`
  library; bos/eos/pad are the `bos_token`/`eos_token`/`pad_token` of its tokenizer_config.json.
  A directory with only `tokenizer.model` + `tokenizer_config.json` (its added tokens) is
  converted by `transformers.AutoTokenizer`, exactly as transformers loads it.
- `tiktoken`: Phi-3-small's BPE ranks file (phi3_jax.data.tiktoken_tokenizer).

Every tokenizer has `encode` (no BOS/EOS added), `decode` (an id it cannot decode is an error),
`vocab_size`, `bos_id`, `eos_id`, `pad_id`, `special_ids`, `decodable_mask(num_rows)`,
`fingerprint` and `save_hf(out_dir)`.

    python -m phi3_jax.data.tokenizer train --input=GLOB[,GLOB] --vocab_size=N --out=PREFIX
    python -m phi3_jax.data.tokenizer convert --model=PREFIX.model
    python -m phi3_jax.data.tokenizer train_tiktoken --input=GLOB[,GLOB] --num_ranks=N --out=FILE
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import ml_collections
import numpy as np
import sentencepiece as spm
import tokenizers

from phi3_jax import config as config_lib
from phi3_jax.data import tokenizer_files
from phi3_jax.data.tiktoken_tokenizer import (
    TiktokenTokenizer,
    load_tiktoken_tokenizer,
    train_ranks,
    write_ranks,
)
from phi3_jax.data.tokenizer_files import TokenizerError

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
# Embedding rows are padded to a multiple of this (32011 -> 32064 for Phi-3).
VOCAB_MULTIPLE = 64


def padded_vocab_size(num_ids: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """The embedding vocabulary: `num_ids` rounded up to a multiple of `multiple`."""
    return -(-num_ids // multiple) * multiple


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


def _read_tokenizer_json(path: str) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(path)
    except Exception as error:  # the tokenizers library raises a bare Exception
        raise TokenizerError(f"{path}: not a tokenizer.json ({error})") from None


def _from_backend(
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
            raise TokenizerError(f"{source}: {key}={name!r} is not a token of the tokenizer")
    if "eos_token" not in ids:
        raise TokenizerError(f"{source}: its tokenizer_config.json names no eos_token")
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


def _transformers_backend(directory: str) -> tokenizers.Tokenizer:
    """What transformers' AutoTokenizer builds from a tokenizer.model + tokenizer_config.json."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(
            f"{directory}: has no tokenizer.json, and converting its tokenizer.model needs "
            "transformers (pip install transformers, or write it with `python -m "
            "phi3_jax.data.tokenizer convert`)"
        ) from None
    backend = AutoTokenizer.from_pretrained(directory).backend_tokenizer
    with open(os.path.join(directory, "tokenizer_config.json"), encoding="utf-8") as f:
        added = json.load(f).get("added_tokens_decoder", {})
    for i, token in added.items():
        if backend.token_to_id(token["content"]) != int(i):
            raise TokenizerError(
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
        raise TokenizerError(f"{path}: not JSON ({error})") from None


def converted_sentencepiece(model_path: str) -> tokenizers.Tokenizer:
    """transformers' conversion of a sentencepiece model with Phi-3's added tokens."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    with tempfile.TemporaryDirectory() as directory:
        os.symlink(os.path.abspath(model_path), os.path.join(directory, "tokenizer.model"))
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(phi3_tokenizer_config(sp), f)
        return _transformers_backend(directory)


def _check_same_pieces(
    sp: spm.SentencePieceProcessor, backend: tokenizers.Tokenizer, json_path: str, model_path: str
) -> None:
    for i in range(sp.GetPieceSize()):
        if backend.id_to_token(i) != sp.IdToPiece(i):
            raise TokenizerError(
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
        raise TokenizerError(f"{model_path}: no such sentencepiece model")
    sp = spm.SentencePieceProcessor(model_file=model_path)
    json_path = sentencepiece_json_path(model_path)
    if os.path.isfile(json_path):
        backend = _read_tokenizer_json(json_path)
        _check_same_pieces(sp, backend, json_path, model_path)
    else:
        backend = converted_sentencepiece(model_path)
    config = phi3_tokenizer_config(sp)
    return _from_backend(backend, config, model_path, {"tokenizer.model": model_path})


def load_hf(path: str) -> Tokenizer:
    """A Hugging Face tokenizer directory, or a tokenizer.json file."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    model_path = os.path.join(directory, "tokenizer.model")
    extra = {"tokenizer.model": model_path} if os.path.isfile(model_path) else {}
    if os.path.isfile(json_path):
        backend = _read_tokenizer_json(json_path)
    elif extra and config:
        backend = _transformers_backend(directory)
    else:
        raise TokenizerError(
            f"{path}: no tokenizer.json, nor a tokenizer.model with its tokenizer_config.json"
        )
    return _from_backend(backend, config, path, extra)


LOADERS = {
    "sentencepiece": load_sentencepiece,
    "hf": load_hf,
    "tiktoken": load_tiktoken_tokenizer,
}


def load(kind: str, path: str) -> Tokenizer | TiktokenTokenizer:
    """The tokenizer of `kind` (one of config.TOKENIZER_KINDS) at `path`."""
    return LOADERS[kind](os.path.expanduser(path))


def load_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer | TiktokenTokenizer:
    """The run's tokenizer, named by `config.data.tokenizer` (kind, path); a missing or bad file
    is a ConfigError naming the key and the file."""
    spec = config.data.tokenizer
    if spec.kind not in LOADERS:
        raise config_lib.ConfigError(
            f"data.tokenizer.kind={spec.kind!r}: must be one of {config_lib.TOKENIZER_KINDS}"
        )
    try:
        return load(spec.kind, spec.path)
    except (OSError, RuntimeError, ValueError) as error:
        # sentencepiece and tokenizers raise RuntimeError/Exception subclasses on bad files.
        raise config_lib.ConfigError(
            f"data.tokenizer.path={spec.path!r} (kind {spec.kind}): {error}"
        ) from None


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


def _lines_of_text_shards(patterns: str) -> Iterator[str]:
    # Lazy import: reading shards needs datatrove, loading a tokenizer does not.
    from phi3_jax.data.readers import iter_documents

    for doc in iter_documents(patterns):
        yield from (line for line in doc.text.split("\n") if line.strip())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.tokenizer")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="a sentencepiece BPE, and its tokenizer.json")
    train.add_argument("--input", required=True, help="comma-separated globs of text shards")
    train.add_argument("--vocab_size", type=int, default=32000, help="pieces; specials on top")
    train.add_argument("--out", required=True, help="output prefix: PREFIX.model, PREFIX.json")
    convert = commands.add_parser("convert", help="PREFIX.json of an existing PREFIX.model")
    convert.add_argument("--model", required=True, help="a sentencepiece .model")
    ranks = commands.add_parser("train_tiktoken", help="a byte-level BPE as tiktoken ranks")
    ranks.add_argument("--input", required=True, help="comma-separated globs of text shards")
    ranks.add_argument("--num_ranks", type=int, required=True, help="256 bytes + merges")
    ranks.add_argument("--out", required=True, help="the ranks file")
    args = parser.parse_args(argv)
    if args.command == "train_tiktoken":
        write_ranks(train_ranks(_lines_of_text_shards(args.input), args.num_ranks), args.out)
        tok = load_tiktoken_tokenizer(args.out)
        print(f"wrote {args.out}: {tok.num_ranks} ranks, embedding vocabulary {tok.vocab_size}")
        return
    if args.command == "train":
        model = train_sentencepiece(_lines_of_text_shards(args.input), args.vocab_size, args.out)
    else:
        model = args.model
    json_path = write_sentencepiece_json(model)
    tok = load_sentencepiece(model)
    print(f"wrote {json_path}: {tok.num_pieces} pieces, embedding vocabulary {tok.vocab_size}")


if __name__ == "__main__":
    main()
