"""grain's worker processes of the training pipeline: they end with the process that started
them, and what they hand over leaves no shared memory behind."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

# How often a grain worker checks that the training process still lives.
PARENT_POLL_S = 0.5


def exit_with_parent(worker_index: int, num_workers: int) -> None:
    """grain's worker init: the worker exits once the process that started it is gone (even
    SIGKILLed, when no cleanup of the parent's runs). With it the multiprocessing resource
    tracker, whose pipe the workers hold too, sees its end and releases the shared memory and
    semaphores left registered."""
    del worker_index, num_workers
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def own_memory(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch from grain's workers copied out of the shared memory they hand it over in.

    A segment is unlinked only once no view of it is left, and a view can outlive the run: a
    JAX array on CPU may alias the numpy array it was made from, and the last batch's are still
    alive at exit, when the resource tracker then reports the segments as leaked. A copy frees
    each segment as soon as its batch is taken (a few hundred KB per step)."""
    return {key: np.array(value) for key, value in batch.items()}
