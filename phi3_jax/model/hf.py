"""Hugging Face <-> phi3_jax: read any supported model directory, write any architecture's.

`load_hf` picks the reader by config.json's model_type, `save_hf` the writer by
`model.architecture`, both from the architecture table; the layouts are `hf_phi3`'s (Phi-3 mini,
medium) and `hf_small`'s (Phi-3-small), the directory I/O `hf_io`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import ml_collections

from phi3_jax.model import architectures, hf_io
from phi3_jax.model.hf_io import (
    CONFIG_FILE,
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    HFFormatError,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MAX_SHARD_BYTES",
    "INDEX_FILE",
    "SINGLE_FILE",
    "HFFormatError",
    "load_hf",
    "save_hf",
]


def load_hf(path: str) -> tuple[ml_collections.ConfigDict, dict]:
    """Read a Hugging Face directory: (a validated run config with its model section, numpy
    params); a model_type of no architecture is an HFFormatError naming it."""
    model_type = hf_io.read_json(os.path.join(path, CONFIG_FILE)).get("model_type")
    arch = architectures.of_hf_model_type(model_type)
    if arch is None:
        known = ", ".join(repr(a.hf_model_type) for a in architectures.ARCHITECTURES.values())
        raise HFFormatError(f"{path}: model_type={model_type!r} is not a Phi-3 (one of {known})")
    return arch.load_hf(path)


def save_hf(
    config: ml_collections.ConfigDict,
    params: Mapping,
    path: str,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    write_also: Callable[[str], None] | None = None,
) -> None:
    """Write a directory that transformers loads (`AutoModelForCausalLM.from_pretrained`; for
    Phi-3-small with its remote code). Tensors keep the params' dtype; `write_also(directory)`
    adds files (a tokenizer's) before the directory appears."""
    arch = architectures.of(config)
    hf_io.write_checkpoint(
        path,
        arch.hf_config(config.model),
        arch.hf_tensors(params, config.model),
        max_shard_bytes,
        write_also,
    )
