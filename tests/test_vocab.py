"""Phi-3-small's vocabulary layout against its published one (PHI3.md §3.7-3.8: HF's
tokenization_phi3_small.py and mlx-lm's dummy list): the special ids on cl100k_base, the masked
ids, and the same layout right after a smaller ranks file."""

from __future__ import annotations

from phi3_jax import vocab


def test_the_specials_on_cl100k_are_phi3_smalls():
    ids = vocab.PHI3_SMALL_SPECIAL_TOKENS
    assert len(ids) == vocab.NUM_SPECIAL_IDS and max(ids.values()) == 100351
    assert {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_suffix|>": 100260,
        "<|system|>": 100261,
        "<|user|>": 100262,
        "<|assistant|>": 100263,
        "<|dummy_id_0|>": 100264,
        "<|dummy_id_1|>": 100265,
        "<|end|>": 100266,
        "<|dummy_id_2|>": 100256,
        "<|dummy_id_3|>": 100267,
        "<|dummy_id_11|>": 100275,
        "<|endofprompt|>": 100276,
        "<|dummy_id_12|>": 100277,
        "<|dummy_id_86|>": 100351,
    }.items() <= ids.items()


def test_the_masked_ids_are_mlx_lms_list():
    # mlx-lm's list; the same as HF's: every dummy, the FIM tokens and <|endofprompt|>.
    mlx = [100256, 100258, 100259, 100260, 100264, 100265, *range(100267, 100352)]
    assert list(vocab.PHI3_SMALL_DUMMY_TOKEN_IDS) == mlx


def test_a_smaller_ranks_file_gets_the_same_layout_after_its_ranks():
    small = vocab.phi3_small_special_tokens(416)
    shift = vocab.CL100K_NUM_RANKS - 416
    assert {t: i + shift for t, i in small.items()} == vocab.PHI3_SMALL_SPECIAL_TOKENS
    assert [i + shift for i in vocab.phi3_small_dummy_ids(416)] == list(
        vocab.PHI3_SMALL_DUMMY_TOKEN_IDS
    )
