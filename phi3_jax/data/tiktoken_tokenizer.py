"""Phi-3-small's tokenizer: tiktoken BPE (cl100k_base-style ranks) plus Phi-3-small's special tokens.

The ranks file (one `base64(token) rank` per line, ranks 0..N-1) is read from a local path; nothing
is downloaded. Phi-3-small's 96 special and dummy ids follow the ranks in its layout (PHI3.md
§3.8): on cl100k_base's 100256 ranks they are Phi-3-small's own ids (`<|endoftext|>` 100257,
`<|user|>` 100262, ..., `<|dummy_id_86|>` 100351; 100352 rows), on a smaller ranks file (the tiny
model's, `train_ranks`) the same layout sits right after its ranks; the layout is
`phi3_jax.vocab`'s. The dummy ids, the FIM tokens and `<|endofprompt|>` are masked in the model
(their logits are -inf): this tokenizer neither encodes them (their strings are plain text) nor
decodes them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tiktoken

from phi3_jax.data import tokenizer_files
from phi3_jax.errors import BadInputError
from phi3_jax.vocab import NUM_SPECIAL_IDS, phi3_small_dummy_ids, phi3_small_special_tokens

# cl100k_base's pre-tokenisation regex (tiktoken_ext.openai_public.cl100k_base).
CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
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
                raise BadInputError(
                    f"{path}:{number}: not a 'base64 rank' line: {line[:80]!r}"
                ) from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise BadInputError(f"{path}: ranks must be 0..{len(ranks) - 1}, each once")
    return ranks


def write_ranks(ranks: dict[bytes, int], path: str) -> None:
    """The tiktoken ranks file of `ranks`, in rank order."""
    with open(path, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")


@dataclasses.dataclass(frozen=True)
class TiktokenTokenizer:
    """tiktoken BPE plus the special tokens it encodes and decodes; encode adds no BOS/EOS."""

    encoding: tiktoken.Encoding
    # The specials it knows, e.g. {"<|endoftext|>": 100257, "<|user|>": 100262, ...}; the masked
    # ones (dummies, FIM, <|endofprompt|>) are not among them.
    special_ids: dict[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    # Embedding rows (ranks + 96 special and dummy ids).
    vocab_size: int
    # The ranks file (its bytes define the tokenizer; save_hf converts it).
    ranks_path: str
    num_ranks: int

    @functools.cached_property
    def _known(self) -> np.ndarray:
        ids = [*range(self.num_ranks), *self.special_ids.values()]
        return tokenizer_files.decodable_mask(ids, self.vocab_size)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; known special-token strings in it become their single ids."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids become their strings, dummy or unknown ids are an error."""
        ids = [int(i) for i in ids]
        for i in tokenizer_files.undecodable(ids, self._known):
            raise ValueError(f"id {i} is neither a BPE token nor a special token it decodes")
        return self.encoding.decode(ids)

    def decodable_mask(self, num_rows: int) -> np.ndarray:
        """[num_rows] bool: True for the ids decode accepts (False for the dummy ids)."""
        return tokenizer_files.decodable_mask(np.flatnonzero(self._known), num_rows)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the ranks file's bytes and the special ids."""
        with open(self.ranks_path, "rb") as f:
            ranks = f.read()
        return tokenizer_files.fingerprint(
            {
                "ranks": ranks,
                "special_ids": self.special_ids,
                "bos_eos_pad": [self.bos_id, self.eos_id, self.pad_id],
            }
        )

    def hf_tokenizer_json(self) -> str:
        """tokenizer.json of the same BPE: transformers' TikTokenConverter of the ranks, with the
        specials at their ids (in the vocabulary too, so that the gaps of the dummies stay)."""
        try:
            from transformers.convert_slow_tokenizer import TikTokenConverter
        except ImportError:
            raise BadInputError(
                f"{self.ranks_path}: writing a Hugging Face tokenizer.json of tiktoken ranks "
                "needs transformers (pip install transformers)"
            ) from None
        backend = TikTokenConverter(vocab_file=self.ranks_path, pattern=CL100K_PAT_STR).converted()
        spec = json.loads(backend.to_str())
        for token, i in sorted(self.special_ids.items(), key=lambda item: item[1]):
            spec["model"]["vocab"][token] = i
            spec["added_tokens"].append(
                {
                    "id": i,
                    "content": token,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
        return json.dumps(spec, ensure_ascii=False, indent=2)

    def save_hf(self, out_dir: str) -> None:
        """A directory from which `transformers.AutoTokenizer` gives exactly these ids."""
        eos = next(t for t, i in self.special_ids.items() if i == self.eos_id)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eos,
            "eos_token": eos,
            "pad_token": eos,
            "clean_up_tokenization_spaces": False,
        }
        tokenizer_files.write_hf_directory(out_dir, self.hf_tokenizer_json(), config, {})


def load_tiktoken_tokenizer(ranks_path: str) -> TiktokenTokenizer:
    """Phi-3-small's tokenizer from a local ranks file; its specials follow the ranks.

    bos, eos and pad are all <|endoftext|>, as in Phi-3-small (it has no separate BOS).
    """
    if not os.path.isfile(ranks_path):
        raise BadInputError(f"{ranks_path}: no such tiktoken ranks file")
    ranks = load_ranks(ranks_path)
    masked = set(phi3_small_dummy_ids(len(ranks)))
    special_ids = {
        t: i for t, i in phi3_small_special_tokens(len(ranks)).items() if i not in masked
    }
    encoding = tiktoken.Encoding(
        name=os.path.basename(ranks_path),
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
        vocab_size=len(ranks) + NUM_SPECIAL_IDS,
        ranks_path=ranks_path,
        num_ranks=len(ranks),
    )


def train_ranks(texts: Iterator[str], num_ranks: int) -> dict[bytes, int]:
    """A byte-level BPE of `num_ranks` ranks (256 bytes + merges) over `texts`, split by cl100k's
    regex, trained by the `tokenizers` library; ranks in merge order, so tiktoken applies the
    merges as they were learnt."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(CL100K_PAT_STR), behavior="isolated"), byte_level]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=num_ranks,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    # ByteLevel spells each byte as one printable character; map merges back to bytes.
    to_byte = {c: b for b, c in enumerate(_byte_level_chars())}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in json.loads(bpe.to_str())["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        token = bytes(to_byte[c] for c in left + right)
        ranks.setdefault(token, len(ranks))
    if len(ranks) != num_ranks:
        raise BadInputError(f"the texts give {len(ranks)} ranks, not {num_ranks}")
    return ranks


def _byte_level_chars() -> list[str]:
    """The character ByteLevel uses for each byte 0..255 (GPT-2's printable mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
