"""Random Hugging Face Phi-3 models for parity tests (transformers' own PyTorch implementation).

Where torch is absent (Python 3.12: see the README's install section) the test calling them skips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from configs import base


def tensors_of(directory) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face directory's safetensors files, by name."""
    tensors = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(directory, name)))
    return tensors


def random_hf_model(seed: int = 0, **overrides) -> transformers.Phi3ForCausalLM:
    """A small randomly initialised Phi3ForCausalLM (eager attention, fp32), norms randomised too."""
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        original_max_position_embeddings=64,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch = pytest.importorskip("torch")
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = transformers.Phi3Config(**kwargs)
    config._attn_implementation = "eager"
    model = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                param.copy_(1.0 + 0.5 * torch.randn_like(param))
    return model


def hf_logits(model: transformers.Phi3ForCausalLM, tokens: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def random_tokens(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


# A LongRoPE model with mini-128k's real factors, its original length shrunk to 32.
LONGROPE = dict(
    hidden_size=192,  # 2 heads of 96, as mini: 48 factors
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=32 * 32,  # the real 128K/4K ratio, with the original length shrunk
    original_max_position_embeddings=32,
    rope_parameters={
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": list(base.LONGROPE_SHORT_FACTOR),
        "long_factor": list(base.LONGROPE_LONG_FACTOR),
        "original_max_position_embeddings": 32,
    },
)
