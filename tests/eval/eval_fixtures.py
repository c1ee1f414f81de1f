"""A tiny random Phi-3 in Hugging Face format (transformers' own save_pretrained) with a small
byte-level BPE tokenizer (read on our side as a tokenizer of kind `hf`)."""

from __future__ import annotations

import os

import pytest

TOKENIZER_TEXT = [
    "Question: Which of these is a mammal?\nAnswer: the whale, because it breathes air.",
    "The following are multiple choice questions (with answers) about science.",
    "Janet has 16 eggs. She eats 3 and bakes with 4. So the answer is 9.",
    "Options:\nA. water\nB. fire\nC. earth\nD. air\n",
    "A man is sitting on a roof. He starts pulling up roofing on a roof.",
]


def save_tiny_hf(out: str, *, vocab: int = 384, seed: int = 0, init_range: float = 0.1) -> str:
    """Writes a random 2-layer GQA Phi-3 and its tokenizer to `out` (once); returns `out`."""
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    torch = pytest.importorskip("torch")  # absent on Python 3.12 (README: Install)
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab - 2,
        special_tokens=["<s>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TOKENIZER_TEXT * 4, trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|endoftext|>"
    )
    config = transformers.Phi3Config(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        initializer_range=init_range,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        sliding_window=None,
    )
    torch.manual_seed(seed)
    model = transformers.Phi3ForCausalLM(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
