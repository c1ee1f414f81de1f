"""grain's workers: one ends once the process that started it is gone (here SIGKILLed, so no
cleanup of its runs), and a batch handed over is copied out of the memory it came in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from phi3_jax.data import workers

# A "training process" that starts a worker (which calls exit_with_parent and would sleep for a
# minute), prints the worker's pid, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c", (
        "import time; from phi3_jax.data import workers; "
        "workers.exit_with_parent(0, 1); print('ready', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "ready\\n"
    print(worker.pid, flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_a_worker_exits_with_the_process_that_started_it():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert _alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_a_batch_is_copied_out_of_shared_memory():
    shared = np.arange(6, dtype=np.int32).reshape(2, 3)
    batch = {"tokens": shared, "segment_ids": shared[:, :2]}
    owned = workers.own_memory(batch)
    for key, value in batch.items():
        np.testing.assert_array_equal(owned[key], value)
        assert not np.shares_memory(owned[key], shared)
