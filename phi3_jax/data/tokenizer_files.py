"""What every tokenizer kind shares: its decodable mask, its fingerprint, and the Hugging Face
directory that `save_hf` writes (tokenizer.json + tokenizer_config.json + extra files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping

import numpy as np


def decodable_mask(ids: Iterable[int], num_rows: int) -> np.ndarray:
    """[num_rows] bool: True at each of `ids` below num_rows."""
    mask = np.zeros(num_rows, bool)
    ids = np.fromiter(ids, np.int64)
    mask[ids[(ids >= 0) & (ids < num_rows)]] = True
    return mask


def undecodable(ids: Iterable[int], known: np.ndarray) -> Iterable[int]:
    """The ids that are not True in `known` (a decodable mask over the tokenizer's ids)."""
    return (i for i in ids if not 0 <= i < len(known) or not known[i])


def fingerprint(parts: Mapping[str, object]) -> str:
    """sha256 of what defines a tokenizer: `parts` as canonical JSON (bytes as hex digests)."""

    def canonical(value):
        return hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else value

    text = json.dumps({k: canonical(v) for k, v in parts.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_hf_directory(
    out_dir: str, tokenizer_json: str, config: Mapping, extra_files: Mapping[str, str]
) -> None:
    """`out_dir/tokenizer.json`, `out_dir/tokenizer_config.json`, and `extra_files` (file name in
    out_dir -> the path copied there)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_json)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    for name, path in extra_files.items():
        shutil.copyfile(path, os.path.join(out_dir, name))
