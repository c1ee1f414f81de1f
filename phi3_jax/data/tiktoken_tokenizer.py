"""Phi-3-small's tokenizer: tiktoken BPE (cl100k_base ranks) plus Phi-3-small's special tokens.

The ranks file (`cl100k_base.tiktoken`: one `base64(token) rank` per line) is read from a local
path; nothing is downloaded. The special tokens and the 100352-row padded vocabulary are those of
Phi-3-small's `tokenization_phi3_small.py` (PHI3.md §3.8). The interface is that of
`phi3_jax.data.tokenizer.Tokenizer`: `encode`, `decode`, `bos_id`, `eos_id`, `pad_id`,
`special_ids`, `vocab_size`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
from collections.abc import Iterable

import tiktoken

# cl100k_base's pre-tokenisation regex (tiktoken_ext.openai_public.cl100k_base).
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Embedding rows of Phi-3-small; ids above the real tokens are "<|dummy_id_N|>" placeholders.
PHI3_SMALL_VOCAB_SIZE = 100352
_FIRST_PADDING_ID = 100277  # "<|dummy_id_12|>"; 100276 is "<|endofprompt|>".

PHI3_SMALL_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|system|>": 100261,
    "<|user|>": 100262,
    "<|assistant|>": 100263,
    "<|dummy_id_0|>": 100264,
    "<|dummy_id_1|>": 100265,
    "<|end|>": 100266,
    # cl100k rank 100256 maps to no bytes, so it is a dummy too.
    "<|dummy_id_2|>": 100256,
    **{f"<|dummy_id_{n}|>": 100264 + n for n in range(3, 12)},
    "<|endofprompt|>": 100276,
    **{
        f"<|dummy_id_{12 + k}|>": _FIRST_PADDING_ID + k
        for k in range(PHI3_SMALL_VOCAB_SIZE - _FIRST_PADDING_ID)
    },
}
# Ids the model never predicts (their logits are masked): every dummy, the FIM tokens and
# <|endofprompt|>, as Phi-3-small's `dummy_token_indices`.
_UNUSED_SPECIALS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>")
PHI3_SMALL_DUMMY_TOKEN_IDS: tuple[int, ...] = tuple(
    sorted(
        i
        for token, i in PHI3_SMALL_SPECIAL_TOKENS.items()
        if "dummy_id" in token or token in _UNUSED_SPECIALS
    )
)


def load_ranks(path: str) -> dict[bytes, int]:
    """A tiktoken ranks file as {token bytes: rank}; a malformed line raises naming it."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise ValueError(f"{path}:{number}: not a 'base64 rank' line: {line!r}") from None
    return ranks


@dataclasses.dataclass(frozen=True)
class TiktokenTokenizer:
    """tiktoken BPE plus special tokens; encode adds no BOS/EOS."""

    encoding: tiktoken.Encoding
    # Special token string -> id, e.g. {"<|endoftext|>": 100257, "<|user|>": 100262, ...}.
    special_ids: dict[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    # Embedding rows (>= every id this tokenizer returns).
    vocab_size: int
    # Special tokens that `encode` maps to their ids; the others (the model's masked dummy ids,
    # whose logits are -inf) are encoded as ordinary text, so they never become targets.
    allowed_special: frozenset[str]

    @functools.cached_property
    def _special_tokens(self) -> dict[int, str]:
        return {i: t for t, i in self.special_ids.items()}

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; allowed special-token strings in it become their single ids."""
        return self.encoding.encode(
            text, allowed_special=self.allowed_special, disallowed_special=()
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids become their strings, any other unknown id is an error."""
        ids = [int(i) for i in ids]
        unknown = [i for i in ids if i not in self._special_tokens and i >= self.encoding.n_vocab]
        if unknown:
            raise ValueError(f"id {unknown[0]} is neither a BPE token nor a special token")
        return self.encoding.decode(ids)


def load_tiktoken_tokenizer(
    ranks_path: str,
    special_ids: dict[str, int] | None = None,
    vocab_size: int = PHI3_SMALL_VOCAB_SIZE,
    masked_ids: Iterable[int] = PHI3_SMALL_DUMMY_TOKEN_IDS,
) -> TiktokenTokenizer:
    """Phi-3-small's tokenizer from a local ranks file (default: Phi-3-small's specials).

    bos, eos and pad are all <|endoftext|>, as in Phi-3-small (it has no separate BOS). Specials
    with `masked_ids` are never produced by `encode`.
    """
    special_ids = dict(PHI3_SMALL_SPECIAL_TOKENS if special_ids is None else special_ids)
    ranks = load_ranks(ranks_path)
    clash = sorted(set(ranks.values()) & set(special_ids.values()))
    if clash:
        raise ValueError(f"{ranks_path}: rank {clash[0]} is also a special token id")
    top = max([*ranks.values(), *special_ids.values()])
    if top >= vocab_size:
        raise ValueError(f"id {top} does not fit the vocabulary of {vocab_size}")
    encoding = tiktoken.Encoding(
        name="phi3small",
        pat_str=CL100K_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens=special_ids,
    )
    eos = special_ids["<|endoftext|>"]
    return TiktokenTokenizer(
        encoding=encoding,
        special_ids=special_ids,
        bos_id=eos,
        eos_id=eos,
        pad_id=eos,
        vocab_size=vocab_size,
        allowed_special=frozenset(t for t, i in special_ids.items() if i not in set(masked_ids)),
    )
