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
import contextlib
import os
from collections.abc import Iterator, Sequence

import ml_collections

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.data.hf_tokenizer import Tokenizer, load_hf
from phi3_jax.data.sentencepiece_tokenizer import (
    load_sentencepiece,
    sentencepiece_json_path,
    train_sentencepiece,
    write_sentencepiece_json,
)
from phi3_jax.data.tiktoken_tokenizer import (
    TiktokenTokenizer,
    load_tiktoken_tokenizer,
    train_ranks,
    write_ranks,
)

LOADERS = {
    "sentencepiece": load_sentencepiece,
    "hf": load_hf,
    "tiktoken": load_tiktoken_tokenizer,
}


def load(kind: str, path: str) -> Tokenizer | TiktokenTokenizer:
    """The tokenizer of `kind` (one of config.TOKENIZER_KINDS) at `path`."""
    # The tokenizer libraries open local files (and keep their paths): a bucket's are mirrored.
    return LOADERS[kind](paths.local_mirror(os.path.expanduser(path)))


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
    # The trainers write local files: a bucket's --out is written locally, then uploaded.
    if args.command == "train_tiktoken":
        with paths.local_file(args.out) as local:
            write_ranks(train_ranks(_lines_of_text_shards(args.input), args.num_ranks), local)
            tok = load_tiktoken_tokenizer(local)
        print(f"wrote {args.out}: {tok.num_ranks} ranks, embedding vocabulary {tok.vocab_size}")
        return
    training = args.command == "train"
    out = args.out + ".model" if training else args.model
    with paths.local_file(out) if training else contextlib.nullcontext(out) as model:
        if training:
            lines = _lines_of_text_shards(args.input)
            train_sentencepiece(lines, args.vocab_size, model.removesuffix(".model"))
        write_sentencepiece_json(model)
        tok = load_sentencepiece(model)
    json_path = sentencepiece_json_path(out)
    print(f"wrote {json_path}: {tok.num_pieces} pieces, embedding vocabulary {tok.vocab_size}")


if __name__ == "__main__":
    main()
