"""Sentencepiece tokenizer with the Phi-3 special tokens, and a CLI that trains a Llama-style BPE.

Any sentencepiece `.model` loads (Llama-2's gives the real Phi-3 vocabulary). The Phi-3 special
tokens are not pieces of the model: they are placed right after its pieces, in Phi-3's order, so on
a 32000-piece model `<|endoftext|>` is 32000 and `<|user|>` is 32010, as in Phi-3 mini/medium. The
embedding vocabulary is the pieces plus the specials rounded up to a multiple of 64 (32064).

    python -m phi3_jax.data.tokenizer train --input=GLOB[,GLOB] --vocab_size=N --out=PREFIX
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import re
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

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


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A sentencepiece model plus the Phi-3 special tokens; encode adds no BOS/EOS."""

    sp: spm.SentencePieceProcessor
    # Special token string -> id, e.g. {"<|endoftext|>": 32000, ..., "<|user|>": 32010}.
    special_ids: dict[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    # Embedding rows (a multiple of 64, >= every id this tokenizer returns).
    vocab_size: int

    @functools.cached_property
    def _special_pattern(self) -> re.Pattern:
        return re.compile("(" + "|".join(map(re.escape, self.special_ids)) + ")")

    @functools.cached_property
    def _special_tokens(self) -> dict[int, str]:
        return {i: t for t, i in self.special_ids.items()}

    @property
    def num_pieces(self) -> int:
        """Pieces of the sentencepiece model (the first special token's id)."""
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings in it become their single ids."""
        ids: list[int] = []
        for i, part in enumerate(self._special_pattern.split(text)):
            # re.split with one group alternates plain text (even) and a matched token (odd).
            if i % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self.sp.EncodeAsIds(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids become their strings, padding rows above them are an error."""
        out = io.StringIO()
        run: list[int] = []
        for i in map(int, ids):
            if i < self.num_pieces:
                run.append(i)
                continue
            if i not in self._special_tokens:
                raise ValueError(f"id {i} is neither a piece nor a special token")
            out.write(self.sp.DecodeIds(run))
            out.write(self._special_tokens[i])
            run = []
        out.write(self.sp.DecodeIds(run))
        return out.getvalue()


def load_tokenizer(path: str) -> Tokenizer:
    """Load a sentencepiece `.model` and add the Phi-3 special tokens after its pieces."""
    sp = spm.SentencePieceProcessor(model_file=path)
    n = sp.GetPieceSize()
    special_ids = {tok: n + k for k, tok in enumerate(PHI3_SPECIAL_TOKENS)}
    eos = special_ids["<|endoftext|>"]
    return Tokenizer(
        sp=sp,
        special_ids=special_ids,
        bos_id=sp.bos_id(),
        # Phi-3 mini/medium: eos and pad are both <|endoftext|>.
        eos_id=eos,
        pad_id=eos,
        unk_id=sp.unk_id(),
        vocab_size=padded_vocab_size(n + len(PHI3_SPECIAL_TOKENS)),
    )


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


def _lines_of_text_shards(patterns: str) -> Iterator[str]:
    # Lazy import: reading shards needs datatrove, loading a tokenizer does not.
    from phi3_jax.data.readers import iter_documents

    for doc in iter_documents(patterns):
        yield from (line for line in doc.text.split("\n") if line.strip())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.tokenizer")
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--input", required=True, help="comma-separated globs of text shards")
    parser.add_argument("--vocab_size", type=int, default=32000, help="pieces; specials on top")
    parser.add_argument("--out", required=True, help="output prefix: PREFIX.model, PREFIX.vocab")
    args = parser.parse_args(argv)
    path = train_sentencepiece(_lines_of_text_shards(args.input), args.vocab_size, args.out)
    tok = load_tokenizer(path)
    print(f"wrote {path}: {tok.num_pieces} pieces, embedding vocabulary {tok.vocab_size}")


if __name__ == "__main__":
    main()
