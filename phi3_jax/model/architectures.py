"""The architecture table: what `model.architecture` (phi3, phi3small) selects, in one place.

Each entry names the family's decoder module, whether it can stop at the final hidden states
(the chunked loss projects them per chunk), its Hugging Face model_type with its reader and
writer, and what its FLOP count needs (the keys each layer's queries attend to, whether the
embedding is tied). Callers look the architecture up here (`of`, `of_hf_model_type`) rather than
test its name. Both families decode through one cache layout (`functional.init_cache`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import flax.linen as nn
import ml_collections
import numpy as np

from phi3_jax.model import blocksparse, hf_phi3, hf_small, small, transformer


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One decoder family and everything that differs between families."""

    name: str
    # The decoder: (model section, deterministic) -> a module of (tokens, positions, segment_ids,
    # cache=None, lengths=None) -> (float32 logits, cache). deterministic=False turns dropout on.
    decoder: Callable[[ml_collections.ConfigDict, bool], nn.Module]
    # The same decoder returning its final-norm hidden states, and the projection of those to
    # logits; None where the family has no such split (its logits come from `decoder` only).
    hidden_decoder: Callable[[ml_collections.ConfigDict], nn.Module] | None
    lm_head: Callable[[ml_collections.ConfigDict], nn.Module] | None
    # Hugging Face: config.json's model_type, the directory reader (path -> (run config,
    # params)), and for writing the config.json dict of a model section and the tensors by HF
    # name of params (params, model section).
    hf_model_type: str
    load_hf: Callable[[str], tuple[ml_collections.ConfigDict, dict]]
    hf_config: Callable[[ml_collections.ConfigDict], dict]
    hf_tensors: Callable[[Mapping, ml_collections.ConfigDict], dict[str, np.ndarray]]
    # Per layer, the keys a query attends to in the model-FLOPs count (`metrics`).
    attention_keys: Callable[[ml_collections.ConfigDict], list[float]]
    # Whether the output projection is the embedding (then the embedding multiplies).
    tied_embeddings: bool


def _phi3_decoder(model: ml_collections.ConfigDict, deterministic: bool = True) -> nn.Module:
    del deterministic  # Phi-3 mini/medium have no dropout.
    return transformer.Phi3(model)


def _phi3_hidden_decoder(model: ml_collections.ConfigDict) -> nn.Module:
    return transformer.Phi3(model, hidden_only=True)


def _small_decoder(model: ml_collections.ConfigDict, deterministic: bool = True) -> nn.Module:
    return small.Phi3Small(model, deterministic=deterministic)


def _dense_keys(config: ml_collections.ConfigDict) -> list[float]:
    """PaLM's convention: every layer's queries see the whole sequence or sliding window
    (causality not subtracted)."""
    window, length = config.model.sliding_window, config.train.seq_len
    return [float(min(length, window) if window else length)] * config.model.num_layers


def _blocksparse_keys(config: ml_collections.ConfigDict) -> float:
    """Keys per query of a blocksparse layer: the tokens of the key blocks each query's block
    keeps (whole blocks, as a blocksparse kernel computes them), averaged over heads and queries
    of a train.seq_len row (its last block may be partial)."""
    m, length = config.model, config.train.seq_len
    size = m.blocksparse_block_size
    num_blocks = -(-length // size)
    kept = blocksparse.block_mask(
        blocksparse.BlocksparseSpec.from_model(m), m.num_heads, num_blocks
    )
    tokens = np.minimum(size, length - size * np.arange(num_blocks))  # per block
    pairs = np.einsum("hqk,q,k->", kept.astype(np.int64), tokens, tokens)
    return float(pairs) / (m.num_heads * length)


def _small_keys(config: ml_collections.ConfigDict) -> list[float]:
    """The sequence for dense layers, the kept blocks' keys for blocksparse ones."""
    m = config.model
    sparse = _blocksparse_keys(config)
    return [
        float(config.train.seq_len) if small.is_dense_layer(m, i) else sparse
        for i in range(m.num_layers)
    ]


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture(
            name="phi3",
            decoder=_phi3_decoder,
            hidden_decoder=_phi3_hidden_decoder,
            lm_head=transformer.lm_head,
            hf_model_type="phi3",
            load_hf=hf_phi3.load_hf,
            hf_config=hf_phi3.model_config_to_hf,
            hf_tensors=hf_phi3.params_to_hf,
            attention_keys=_dense_keys,
            tied_embeddings=False,
        ),
        Architecture(
            name="phi3small",
            decoder=_small_decoder,
            hidden_decoder=None,
            lm_head=None,
            hf_model_type="phi3small",
            load_hf=hf_small.load_hf,
            hf_config=hf_small.model_config_to_hf,
            hf_tensors=hf_small.params_to_hf,
            attention_keys=_small_keys,
            tied_embeddings=True,
        ),
    )
}


def of(config: ml_collections.ConfigDict) -> Architecture:
    """The entry of `config.model.architecture`."""
    name = config.model.architecture
    if name not in ARCHITECTURES:
        raise ValueError(
            f"model.architecture={name!r}: not one of {', '.join(map(repr, ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]


def of_hf_model_type(model_type: str | None) -> Architecture | None:
    """The entry whose Hugging Face config.json has this model_type, or None."""
    return next((a for a in ARCHITECTURES.values() if a.hf_model_type == model_type), None)
