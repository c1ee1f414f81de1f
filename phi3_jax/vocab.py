"""Vocabulary layouts as plain constants: Phi-3-small's special and dummy ids (PHI3.md §3.8).

A leaf module (no phi3_jax or tokenizer-library imports), so the model, its Hugging Face reader
and the configs can name these ids without loading tiktoken. The tokenizer
(`phi3_jax.data.tiktoken_tokenizer`) builds its specials from the same layout.

On cl100k_base's 100256 ranks the 96 special and dummy ids are Phi-3-small's own
(`<|endoftext|>` 100257, `<|user|>` 100262, ..., `<|dummy_id_86|>` 100351; 100352 rows); on a
smaller ranks file (the tiny model's) the same layout sits right after its ranks.
"""

from __future__ import annotations

# cl100k_base's ranks are 0..100255; Phi-3-small's specials take the 96 ids after them.
CL100K_NUM_RANKS = 100256
NUM_SPECIAL_IDS = 96


def phi3_small_special_tokens(first_id: int) -> dict[str, int]:
    """Phi-3-small's special tokens placed from `first_id` (cl100k: 100256) on, in its layout."""
    layout = [
        # cl100k's id 100256 maps to no bytes: a dummy.
        "<|dummy_id_2|>",
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|dummy_id_0|>",
        "<|dummy_id_1|>",
        "<|end|>",
        *(f"<|dummy_id_{n}|>" for n in range(3, 12)),
        "<|endofprompt|>",
        *(f"<|dummy_id_{n}|>" for n in range(12, 87)),
    ]
    return {token: first_id + k for k, token in enumerate(layout)}


# Specials the model masks besides the dummies, as Phi-3-small's `dummy_token_indices`.
_UNUSED_SPECIALS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>")


def phi3_small_dummy_ids(first_id: int) -> tuple[int, ...]:
    """The masked ids of the layout at `first_id`: every dummy, the FIM tokens, <|endofprompt|>."""
    return tuple(
        sorted(
            i
            for token, i in phi3_small_special_tokens(first_id).items()
            if "dummy_id" in token or token in _UNUSED_SPECIALS
        )
    )


PHI3_SMALL_SPECIAL_TOKENS = phi3_small_special_tokens(CL100K_NUM_RANKS)
PHI3_SMALL_DUMMY_TOKEN_IDS = phi3_small_dummy_ids(CL100K_NUM_RANKS)
