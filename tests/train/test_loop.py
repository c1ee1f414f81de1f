"""The training loop through its CLI: bitwise exact resume after SIGKILL (also of a Phi-3-small
twin with dropout on), a kill during an async save, SIGTERM, a corrupted latest checkpoint, a
checkpoint of other shapes, an unwritable workdir and an unknown config key.

Runs are subprocesses of `python -m phi3_jax.train` on one CPU device, on the bundled corpus and
tokenizer, with a model smaller than tiny (2 layers of width 64; the tokenizer's 32064 rows).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import fasteners
import jax
import numpy as np
import pytest

from phi3_jax import checkpoint, metrics
from phi3_jax.train import loop
from phi3_jax.train import restore as restore_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12
# Command-line overrides of configs/phi3_tiny.py shared by every run here.
OVERRIDES = {
    "model.hidden_size": 64,
    "model.intermediate_size": 128,
    "model.num_layers": 2,
    "train.seq_len": 32,
    "train.global_batch_size": 4,
    "train.steps": STEPS,
    "optim.warmup_steps": 2,
    "optim.lr": 1e-3,
    "data.num_workers": 0,
    "log.every_steps": 1,
    "log.peak_flops": 1e10,
    "eval.every_steps": 0,
    "checkpoint.every_steps": 6,
}


def command(workdir, **overrides) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]
    return [sys.executable, "-m", "phi3_jax.train", "--config=configs/phi3_tiny.py"] + [
        f"--workdir={workdir}",
        *flags,
    ]


def environment(hugetlb: bool = True) -> dict[str, str]:
    # One CPU device (the test process's 8 emulated ones are not inherited), unbuffered lines;
    # glibc's large allocations on huge pages (as make train sets it) or not.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "GLIBC_TUNABLES")}
    env |= {"JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return env | ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"} if hugetlb else {})


def run(
    workdir, check: bool = True, hugetlb: bool = True, **overrides
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(workdir, **overrides),
        cwd=REPO,
        env=environment(hugetlb),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start(workdir, **overrides) -> subprocess.Popen:
    return subprocess.Popen(
        command(workdir, **overrides),
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def losses(workdir) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad_norm) of train lines; a resumed run's lines replace earlier ones."""
    return {
        line["step"]: (line["loss"], line["grad_norm"])
        for line in metrics.read_metrics(str(workdir))
        if "loss" in line
    }


def saved_params(workdir, step: int) -> list[np.ndarray]:
    """The params of a checkpoint, on one device, as host numpy arrays."""
    _, params, _ = restore_lib.restore_params_of_run(str(workdir), step)
    return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def steps_on_disk(workdir) -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)))


# Phi-3-small's structure on the same model (GQA, one blocksparse and one dense layer, blocks of 8
# tokens: 32 tokens reach its vertical stripes) with its 0.1 embedding and FFN dropout on; 6 steps,
# checkpoints at 3 and 6.
SMALL_STEPS = 6
SMALL_OVERRIDES = {
    "model.architecture": "phi3small",
    "model.num_kv_heads": 2,
    "model.blocksparse_block_size": 8,
    "model.blocksparse_num_local_blocks": 2,
    "model.blocksparse_vert_stride": 4,
    "model.embedding_dropout": 0.1,
    "model.ffn_dropout": 0.1,
    "train.steps": SMALL_STEPS,
    "checkpoint.every_steps": SMALL_STEPS // 2,
}


def straight_run(tmp_path_factory, worker_id, name: str, **overrides):
    """An uninterrupted run, made once and shared by the xdist workers. It allocates without
    huge pages and the runs compared with it with them, so the bitwise checks also show that
    the allocator setting (`make train`'s GLIBC_TUNABLES) changes no result."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    workdir = root / name
    with fasteners.InterProcessLock(str(root / f"{name}.lock")):
        if not (workdir / "complete").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            result = run(workdir, hugetlb=False, **overrides)
            assert "starting from a random init" in result.stdout
            (workdir / "complete").write_text("")
    return workdir


@pytest.fixture(scope="session")
def straight(tmp_path_factory, worker_id):
    """12 steps uninterrupted, checkpoints at 6 and 12."""
    return straight_run(tmp_path_factory, worker_id, "straight")


@pytest.fixture(scope="session")
def straight_small(tmp_path_factory, worker_id):
    """The Phi-3-small twin's 6 steps uninterrupted, checkpoints at 3 and 6."""
    return straight_run(tmp_path_factory, worker_id, "straight_small", **SMALL_OVERRIDES)


def kill_after_checkpoint_then_resume(straight, workdir, steps: int, **overrides) -> None:
    """SIGKILL a run once its checkpoint at steps / 2 is complete, resume it, and assert that
    every later step's loss and grad norm and the final params equal `straight`'s bitwise."""
    middle = steps // 2
    process = start(workdir, **overrides)
    checkpoints = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)
    # Freeze the run at each progress line past the middle until its checkpoint has completed.
    for line in process.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) > middle:
            process.send_signal(signal.SIGSTOP)
            if os.path.isdir(os.path.join(checkpoints, str(middle))):
                break
            process.send_signal(signal.SIGCONT)
    process.kill()
    process.wait()
    assert str(middle) in os.listdir(checkpoints) and str(steps) not in os.listdir(checkpoints)

    resumed = run(workdir, **overrides)
    assert f"resuming from step {middle}" in resumed.stdout
    expected, got = losses(straight), losses(workdir)
    for step in range(middle + 1, steps + 1):
        assert got[step] == expected[step], step  # bitwise: exact float equality
    assert len(expected) == steps
    for a, b in zip(saved_params(straight, steps), saved_params(workdir, steps), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_exact(straight, tmp_path):
    kill_after_checkpoint_then_resume(straight, tmp_path / "killed", STEPS)
    expected = losses(straight)
    assert expected[STEPS][0] < expected[1][0]


@pytest.mark.slow  # three more runs (~45 s); the fast check of the keying is in test_small_train
def test_small_with_dropout_resumes_bitwise_exact_after_sigkill(straight_small, tmp_path):
    """Dropout masks are keyed by the seed and step, not drawn from process state."""
    kill_after_checkpoint_then_resume(
        straight_small, tmp_path / "killed", SMALL_STEPS, **SMALL_OVERRIDES
    )


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_kill_during_async_save_leaves_the_previous_checkpoint(straight, tmp_path):
    workdir = tmp_path / "killed"
    checkpoints = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)
    process = start(workdir, **{"checkpoint.every_steps": 4})
    deadline = time.monotonic() + 240
    # SIGKILL the moment orbax's temporary directory of step 8 appears (the save in flight).
    while time.monotonic() < deadline and process.poll() is None:
        names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
        if any(n.startswith("8.orbax-checkpoint-tmp") for n in names):
            process.kill()
            break
        time.sleep(0.001)
    process.wait()
    on_disk = steps_on_disk(workdir)
    assert "4" in on_disk and "8" not in on_disk, on_disk

    resumed = run(workdir, **{"checkpoint.every_steps": 4})
    assert "a save that never completed" in resumed.stdout
    assert "resuming from step 4" in resumed.stdout
    expected, got = losses(straight), losses(workdir)
    for step in range(5, STEPS + 1):
        assert got[step] == expected[step], step


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path):
    workdir = tmp_path / "corrupted"
    shutil.copytree(straight, workdir)
    state_dir = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR, str(STEPS), "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")

    result = run(workdir)
    assert f"checkpoint: step {STEPS} in" in result.stdout
    assert "is corrupted" in result.stdout and "falling back to step 6" in result.stdout
    assert "resuming from step 6" in result.stdout
    # The run redid steps 7-12, bitwise as before, and saved a good step 12 again.
    assert losses(workdir)[STEPS] == losses(straight)[STEPS]
    assert f"corrupted-{STEPS}" in steps_on_disk(workdir)
    for a, b in zip(saved_params(straight, STEPS), saved_params(workdir, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_other_model_shapes_is_a_clear_error(straight, tmp_path):
    workdir = tmp_path / "other"
    shutil.copytree(straight, workdir)
    result = run(workdir, check=False, **{"model.num_layers": 3})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model.num_layers=2 (config: 3)" in last, last


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        loop.WorkdirError, match=r"--workdir=.*a_file/run: not a writable directory"
    ):
        loop.prepare_workdir(str(blocker / "run"))
    result = run(blocker / "run", check=False)
    assert result.returncode == 1
    assert "not a writable directory" in result.stderr.strip().splitlines()[-1]


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_sigterm_saves_a_last_checkpoint_and_exits_cleanly(straight, tmp_path):
    workdir = tmp_path / "preempted"
    process = start(workdir, **{"checkpoint.every_steps": 100})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step 3/"):
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert any(line.startswith("received signal 15 at step") for line in lines), lines
    saved = [int(name) for name in steps_on_disk(workdir)]
    assert len(saved) == 1 and 3 <= saved[0] < STEPS
    resumed = run(workdir)
    assert f"resuming from step {saved[0]}" in resumed.stdout
    assert losses(workdir)[STEPS] == losses(straight)[STEPS]


def test_unknown_config_key_is_a_clear_error(tmp_path):
    result = run(tmp_path / "run", check=False, **{"train.nope": 1})
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1] == "error: --config.train.nope: unknown config key"
    )


def test_removed_tokenizer_path_key_names_its_replacement(tmp_path):
    result = run(tmp_path / "run", check=False, **{"data.tokenizer_path": "data/tokenizer.model"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --config.data.tokenizer_path: removed; name the tokenizer with "
        "data.tokenizer.kind (sentencepiece | hf | tiktoken) and data.tokenizer.path"
    )
