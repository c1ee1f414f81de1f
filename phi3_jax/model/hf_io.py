"""Hugging Face model directories, whatever the architecture: reading config.json and safetensors
tensors (each checked against the shape its config implies), and writing them atomically.

The per-architecture layouts (`hf_phi3`, `hf_small`) build on this module; `hf` picks the one a
directory or a config needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import ml_collections
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.flax import save_file

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.errors import BadInputError

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# transformers' default shard size for save_pretrained.
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


class HFFormatError(BadInputError):
    """A Hugging Face directory is not a loadable model; the message names the file and tensor."""


def validated_model(model: ml_collections.ConfigDict, where: str) -> ml_collections.ConfigDict:
    """The model section, validated; an invalid value is an HFFormatError naming `where`."""
    try:
        config_lib.validate_model(model)
    except config_lib.ConfigError as e:
        raise HFFormatError(f"{where}: {e}") from None
    return model


def read_json(path: str) -> dict:
    """A JSON file as a dict; a missing or malformed file raises HFFormatError naming it."""
    if not os.path.isfile(path):
        raise HFFormatError(f"{path}: not found (not a Hugging Face model directory?)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path}: invalid JSON ({e})") from None


def _weight_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index or the single file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFFormatError(f"{index}: no weight_map")
        files = {name: os.path.join(path, f) for name, f in weight_map.items()}
        for file in sorted(set(files.values())):
            if not os.path.isfile(file):
                raise HFFormatError(f"{file}: shard listed in {index} is missing")
        return files
    single = os.path.join(path, SINGLE_FILE)
    if not os.path.isfile(single):
        pickled = sorted(n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth")))
        if pickled:
            raise HFFormatError(
                f"{path}: holds only PyTorch pickled weights ({', '.join(pickled)}), which are "
                "not read (unpickling can run any code); save the model as safetensors first "
                "(transformers: save_pretrained(DIR, safe_serialization=True))"
            )
        raise HFFormatError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
    return {name: single for name in _tensor_names(single)}


def _tensor_names(file: str) -> list[str]:
    try:
        with safe_open(file, framework="flax") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as e:
        raise HFFormatError(f"{file}: unreadable safetensors file ({e})") from None


class _TensorReader:
    """Reads HF tensors one at a time, checking each against the shape config.json implies."""

    def __init__(self, files: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]]):
        self.files, self.shapes = files, shapes
        self._open: dict[str, object] = {}

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise HFFormatError(f"tensor {name!r} is missing from the checkpoint")
        file = self.files[name]
        try:
            if file not in self._open:
                self._open[file] = safe_open(file, framework="flax")
            array = np.asarray(self._open[file].get_tensor(name))
        except (SafetensorError, OSError) as e:
            raise HFFormatError(f"{file}: cannot read tensor {name!r} ({e})") from None
        if array.shape != self.shapes[name]:
            raise HFFormatError(
                f"{file}: tensor {name!r} has shape {array.shape}, config.json implies "
                f"{self.shapes[name]}"
            )
        return array


def checkpoint_reader(
    path: str, shapes: Mapping[str, tuple[int, ...]], family: str = "Phi-3"
) -> _TensorReader:
    """A reader of the directory's tensors by name; a tensor not in `shapes` is an error."""
    files = _weight_files(path)
    unexpected = sorted(set(files) - set(shapes))
    if unexpected:
        raise HFFormatError(
            f"{files[unexpected[0]]}: tensor {unexpected[0]!r} is not part of a {family} "
            f"({len(unexpected)} unexpected in all); refusing to drop it silently"
        )
    return _TensorReader(files, shapes)


def run_config(model: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """A run configuration around an imported model section, validated and frozen."""
    config = config_lib.default_config()
    config.variant = "hf"
    config.model = model
    # Small models may have a shorter context than the default training length.
    config.train.seq_len = min(config.train.seq_len, model.max_position_embeddings)
    return config_lib.freeze(config)


def _shard(tensors: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards


def write_checkpoint(
    path: str,
    hf_config: Mapping,
    tensors: Mapping[str, np.ndarray],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    write_also: Callable[[str], None] | None = None,
) -> None:
    """Write config.json and the safetensors (sharded past max_shard_bytes, with an index), and
    whatever `write_also(directory)` adds.

    Everything is written to a temporary sibling directory and renamed into place only when
    complete, so a crash never leaves a half-written model.
    """
    with paths.atomic_directory(path) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2)
        shards = _shard(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], os.path.join(tmp, SINGLE_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for n, shard in enumerate(shards, 1):
                name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(tmp, name), metadata={"format": "pt"})
                weight_map.update({tensor: name for tensor in shard})
            total = sum(a.nbytes for a in tensors.values())
            with open(os.path.join(tmp, INDEX_FILE), "w") as f:
                json.dump(
                    {"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2
                )
        if write_also is not None:
            write_also(tmp)
