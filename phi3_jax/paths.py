"""Paths on disk: the one atomic directory write.

A leaf module (no phi3_jax imports), so that every layer can write through it: the params
checkpoint (`checkpoint.save_params`) and the Hugging Face export (`model.hf.write_checkpoint`)
both build their directory with `atomic_directory`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield a temporary sibling directory of `path` to write into; on a clean exit it is renamed
    to `path`, so a reader sees the directory only once complete (a crash or an error leaves
    nothing at `path`, and the temporary directory is removed).

    An existing `path` is a FileExistsError naming it (never overwritten); missing parents are
    created.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path}: already exists; refusing to overwrite")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
