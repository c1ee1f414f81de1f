"""`launch/local.sh 2`: the tiny model trains on two processes (4 CPU devices each, coordinator on
127.0.0.1), the whole launch is killed after a checkpoint, and a second launch resumes from it
and finishes the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir, log_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "bash",
            "launch/local.sh",
            "2",
            f"--port={free_port()}",
            f"--log_dir={log_dir}",
            "--config=configs/phi3_tiny.py",
            f"--workdir={workdir}",
            f"--config.train.steps={STEPS}",
            "--config.checkpoint.every_steps=2",
            "--config.checkpoint.async_save=False",
            "--config.optim.warmup_steps=1",
            "--config.data.phase2_start_step=3",
            "--config.data.num_workers=0",
            "--config.eval.every_steps=1000",
            "--config.log.every_steps=1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own process group, so the kill takes the launcher and both trainers at once.
        start_new_session=True,
    )


def read(path) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.slow
def test_two_processes_train_get_killed_and_resume(tmp_path):
    workdir = tmp_path / "run"
    first = launch(workdir, tmp_path / "logs1")
    checkpoint = workdir / "checkpoints" / "2"
    deadline = time.monotonic() + 600
    while not checkpoint.is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    assert checkpoint.is_dir(), read(tmp_path / "logs1" / "process_0.log")[-3000:]
    # A crash, not a polite stop: SIGKILL to the launcher and both training processes.
    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    log1 = read(tmp_path / "logs1" / "process_0.log")
    assert "starting from a random init" in log1
    assert f"checkpoint step {STEPS}" not in log1

    second = launch(workdir, tmp_path / "logs2")
    assert second.wait(timeout=900) == 0, read(tmp_path / "logs2" / "process_0.log")[-3000:]
    # Process 0 speaks for the run.
    log2 = read(tmp_path / "logs2" / "process_0.log")
    resumed = [line for line in log2.splitlines() if line.startswith("resuming from step ")]
    assert resumed == [f"resuming from step 2 (checkpoint {workdir}/checkpoints/2)"]
    assert "starting from" not in log2
    assert f"step 3/{STEPS} | loss" in log2 and f"step 2/{STEPS} | loss" not in log2
    assert f"checkpoint step {STEPS} in" in log2
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()
