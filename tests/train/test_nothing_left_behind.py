"""A SIGKILLed trainer leaves nothing behind: its grain workers and the multiprocessing resource
tracker exit with it, and the shared-memory segments and semaphores they held are released.

The trainer runs in its own session, so every process it started keeps its process group id even
once reparented to init; the shared memory of the run is what those processes map or hold open
in /dev/shm just before the kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from test_loop import REPO, command, environment

SHM = "/dev/shm"


def start_with_workers(workdir, **overrides) -> subprocess.Popen:
    return subprocess.Popen(
        command(
            workdir,
            **{"data.num_workers": 2, "train.steps": 10_000, "checkpoint.every_steps": 3}
            | overrides,
        ),
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def group(pgid: int) -> list[str]:
    """`pid command` of every live process of the process group."""
    table = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [
        f"{fields[0]} {fields[3] if len(fields) > 3 else ''}"
        for fields in (line.split(None, 3) for line in table.splitlines())
        if fields[1] == str(pgid) and not fields[2].startswith("Z")
    ]


def shared_memory_of(pids: list[str]) -> set[str]:
    """/dev/shm names that the processes map or hold open (segments and semaphores)."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                names |= {line.split(SHM + "/")[1].split()[0] for line in f if SHM + "/" in line}
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(SHM + "/"):
                    names.add(target[len(SHM) + 1 :])
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited meanwhile
    return names


def kill_and_check(process: subprocess.Popen) -> None:
    """SIGKILL the trainer alone; within 10 s no process of its group and none of the shared
    memory they held may remain."""
    pids = [entry.split()[0] for entry in group(process.pid)]
    held = shared_memory_of(pids)
    assert len(pids) >= 4, pids  # the trainer, two workers and the resource tracker
    assert any(n.startswith("psm_") for n in held) and any(n.startswith("sem.") for n in held)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group(process.pid) == []
    assert sorted(n for n in held if os.path.exists(os.path.join(SHM, n))) == []


def wait_for_progress(process: subprocess.Popen, lines: int) -> None:
    """Reads the run's output until its `lines`-th progress line (workers are running then)."""
    for line in process.stdout:
        lines -= line.startswith("step ")
        if not lines:
            return
    raise AssertionError("the run ended before its progress lines")


def test_sigkill_leaves_no_worker_tracker_or_shared_memory(tmp_path):
    process = start_with_workers(tmp_path / "run")
    wait_for_progress(process, 2)
    kill_and_check(process)


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_leave_nothing(tmp_path):
    workdir = tmp_path / "run"
    rng = random.Random(0)
    for _ in range(6):
        process = start_with_workers(workdir, **{"checkpoint.every_steps": 2})
        wait_for_progress(process, 1)
        time.sleep(rng.uniform(0.0, 1.5))  # some kills land inside a save
        kill_and_check(process)
