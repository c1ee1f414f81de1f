"""Evaluation on several JAX processes: one process drives, every process computes.

Process 0 (the driver) reads the task files; what it read is sent to every process (`shared`),
so every process builds the same requests and cuts them into the same batches, which are global
arrays over the mesh that all processes score together. Scores come back replicated, so every
process holds them; only the driver prints and writes. In a single process nothing is sent.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")


def is_driver() -> bool:
    """Whether this process reads the tasks and writes the results (process 0)."""
    return jax.process_index() == 0


def shared(read: Callable[[], T]) -> T:
    """`read()` run on the driver; its result, or the error it raised, on every process (the
    others wait for it), so a bad task file fails every process with the driver's message."""
    if jax.process_count() == 1:
        return read()
    outcome = None
    if is_driver():
        try:
            outcome = (read(), None)
        except Exception as error:  # re-raised on every process below
            outcome = (None, error)
    value, error = _broadcast(outcome)
    if error is not None:
        raise error
    return value


def _pickled(outcome) -> bytes:
    try:
        return pickle.dumps(outcome)
    except Exception as error:  # what cannot be sent fails every process, with its message
        return pickle.dumps((None, RuntimeError(f"{type(error).__name__}: {error}")))


def _broadcast(outcome):
    """The driver's outcome on every process: its size, then its pickled bytes."""
    payload = np.frombuffer(_pickled(outcome), np.uint8) if is_driver() else None
    size = int(
        multihost_utils.broadcast_one_to_all(np.int64(0 if payload is None else payload.size))
    )
    buffer = payload if payload is not None else np.zeros(size, np.uint8)
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())
