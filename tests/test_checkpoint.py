"""What checkpoints guarantee: bytes changed on disk are found (checksums) and fallen back from,
a non-finite state is never saved, a failed save (a full disk) is one line at once with the
previous checkpoint kept, and a checkpoint of another process count is refused, not "corrupted".

Run-level cases go through the CLI like tests/train/test_loop.py (whose runs and straight run
they share); the rest is in-process on the emulated CPU devices.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi3_jax import checkpoint, sharding
from phi3_jax.checkpoint import checksums
from phi3_jax.train import loop
from phi3_jax.train import state as state_lib
from phi3_jax.train import step as step_lib

# The training runs and fixtures these share live beside the loop's tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train"))
from test_loop import (  # noqa: E402
    REPO,
    STEPS,
    command,
    environment,
    losses,
    run,
    saved_params,
    steps_on_disk,
    straight,  # noqa: F401 - the shared straight run (a fixture)
)
from train_fixtures import packed_batch, small_config  # noqa: E402


def array_files(step_dir) -> list[str]:
    """The array data files of a checkpoint step (orbax/OCDBT's `state/.../d/*`)."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        if os.path.basename(root) == "d"
        for name in names
    )


def flip_bytes(path: str, count: int = 3) -> None:
    """XOR one bit in `count` bytes spread over the file's middle."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        for i in range(1, count + 1):
            data[len(data) * i // (count + 1)] ^= 0x40
        f.seek(0)
        f.write(data)


def test_flipped_bytes_in_array_files_fall_back_and_set_aside_under_a_new_name(straight, tmp_path):  # noqa: F811
    workdir = tmp_path / "flipped"
    shutil.copytree(straight, workdir)
    checkpoints = workdir / checkpoint.CHECKPOINTS_DIR
    # Step 12 was set aside once before (and then re-saved): the new set-aside needs a new name.
    (checkpoints / f"corrupted-{STEPS}").mkdir()
    (checkpoints / f"corrupted-{STEPS}" / "earlier").write_text("kept")
    biggest = max(array_files(checkpoints / str(STEPS)), key=os.path.getsize)
    flip_bytes(biggest)

    result = run(workdir)
    lines = result.stdout.splitlines()
    damaged = [line for line in lines if "is corrupted" in line]
    assert len(damaged) == 1 and damaged[0].startswith(f"checkpoint: step {STEPS} in"), lines
    assert "does not match its saved checksum" in damaged[0]
    assert damaged[0].endswith("falling back to step 6")
    assert (
        f"checkpoint: moved the corrupted step {STEPS} to {checkpoints}/corrupted-{STEPS}.2"
        in lines
    )
    assert "resuming from step 6" in result.stdout
    # Nothing good was deleted: step 6 is still there, the earlier set-aside untouched, and the
    # re-done step 12 is bitwise the straight run's.
    assert steps_on_disk(workdir) == sorted(
        ["6", str(STEPS), f"corrupted-{STEPS}", f"corrupted-{STEPS}.2"]
    )
    assert (checkpoints / f"corrupted-{STEPS}" / "earlier").read_text() == "kept"
    assert losses(workdir)[STEPS] == losses(straight)[STEPS]
    for a, b in zip(saved_params(straight, STEPS), saved_params(workdir, STEPS), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checksums_are_the_same_on_any_mesh_and_change_with_one_bit():
    config = small_config((2, 4, 1))
    mesh = sharding.make_mesh(config.mesh)
    state = state_lib.init_state(config, mesh)
    sums, non_finite = checksums.array_checksums(state)
    assert non_finite == [] and ".params['embed_tokens']['embedding']" in sums
    one_device = jax.device_put(state, jax.devices()[0])
    assert checksums.array_checksums(one_device)[0] == sums
    embedding = np.asarray(state.params["embed_tokens"]["embedding"])
    flipped = embedding.view(np.uint32).copy()
    flipped[7, 3] ^= 1  # one bit of one float
    state.params["embed_tokens"]["embedding"] = flipped.view(np.float32)
    changed = checksums.array_checksums(state)[0]
    assert [k for k in sums if sums[k] != changed[k]] == [".params['embed_tokens']['embedding']"]


def overflowing_config(on_nan: str):
    """An lr so close to float32's largest value that the first update overflows to inf while the
    loss and gradient it comes from are finite."""
    config = small_config(on_nan=on_nan)
    config.model.update(num_layers=2, hidden_size=64, intermediate_size=128)
    config.optim.update(lr=3.4e38, weight_decay=0.1)
    return config


def test_an_update_that_overflows_is_skipped_or_stops_and_is_never_saved(tmp_path):
    config = overflowing_config("skip")
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = state_lib.init_state(config, mesh)
    before = jax.tree.map(np.asarray, state.params)
    new, m = step_lib.make_train_step(config, mesh)(state, packed_batch(config))
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
    assert not bool(m["state_finite"]) and bool(m["skipped"])
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))

    # Under train.on_nan=stop the same metrics end the run (one compile serves both modes: the
    # step computes state_finite either way).
    scalars = {k: float(v) for k, v in m.items()}
    config = overflowing_config("stop")
    with pytest.raises(
        loop.NonFiniteError,
        match=r"non-finite params or optimizer state after the update of step 1",
    ):
        loop._check_finite(config, 1, scalars, print)
    # checkpoint.save refuses such a state by itself too, and writes nothing.
    manager = checkpoint.make_manager(str(tmp_path), config)
    with pytest.raises(
        checkpoint.NonFiniteStateError,
        match=r"^step 1: not saved, the state holds NaN or inf in \.params",
    ):
        overflowed = new.replace(params=jax.tree.map(lambda x: x * jnp.inf, new.params))
        checkpoint.save(
            manager, 1, overflowed, iter(grain.MapDataset.range(4).to_iter_dataset()), config, ""
        )
    manager.close()
    assert os.listdir(tmp_path / checkpoint.CHECKPOINTS_DIR) == []


def test_brief_keeps_the_operating_system_cause_of_a_long_or_chained_error():
    # tensorstore's form, its cause in the middle of a line long enough to be elided.
    long = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local file "'
        + "/deep" * 60
        + '": Failed to write 3186688 bytes to file 9: No space left on device '
        "[os_error_code='28'] [source locations='" + "tensorstore/kvstore/file.cc:1 " * 8 + "']"
    )
    line = checkpoint.brief(long)
    assert len(line) < 400 and " ... " in line
    assert line.endswith("[No space left on device]"), line
    # An error raised from an OSError names its cause too; one that says it already is unchanged.
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("write of step 8 aborted") from error
    except RuntimeError as chained:
        assert checkpoint.brief(chained) == (
            "RuntimeError: write of step 8 aborted [No space left on device]"
        )
    assert checkpoint.brief(OSError(28, "No space left on device")) == (
        "OSError: [Errno 28] No space left on device"
    )
    assert checkpoint.brief(ValueError("a bad value")) == "ValueError: a bad value"


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs: one checkpoint of test_loop's model (31 MB) fits, a second does not."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_during_a_save_is_one_line_at_once_and_keeps_the_previous_checkpoint(small_disk):
    workdir = small_disk / "run"
    every = {"checkpoint.every_steps": 4}
    result = run(workdir, check=False, **every)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint: saving step 8 in {workdir}/checkpoints failed ("), (
        last
    )
    assert (
        "No space left on device" in last
        and " MiB free there; the last checkpoint, step 4, is kept; stopping" in last
    )
    # Found at once: the run stopped before step 12 (the next save) instead of training on.
    assert f"step {STEPS}/{STEPS}" not in result.stdout
    assert steps_on_disk(workdir) == ["4"]
    # The line is the only one: no traceback of the failed save's late writes above it.
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]


@pytest.mark.slow
def test_disk_full_with_on_save_error_continue_trains_on_and_reports_each_failed_save(small_disk):
    workdir = small_disk / "run"
    result = run(workdir, **{"checkpoint.every_steps": 4, "checkpoint.on_save_error": "continue"})
    failed = [line for line in result.stdout.splitlines() if "failed (" in line]
    assert [line.split(" in ")[0] for line in failed] == [
        "checkpoint: saving step 8",
        f"checkpoint: saving step {STEPS}",
    ]
    assert all("the last checkpoint, step 4, is kept; training goes on" in line for line in failed)
    assert f"step {STEPS}/{STEPS}" in result.stdout
    assert steps_on_disk(workdir) == ["4"]
    # Each failed save's writes still in flight end after orbax closed their event loop: once
    # dozens of "Event loop is closed" tracebacks, now nothing.
    assert result.stderr == "", result.stderr[-3000:]


# With a run's checkpoints, what a failed save's aborted writes print is silenced: a late write's
# "Event loop is closed" (asyncio's call_soon_threadsafe on a closed loop, reported as
# unraisable) and asyncio's "exception was never retrieved" of an error raised in orbax's code.
# Other unraisable errors and unretrieved exceptions still print.
_ABORTED_WRITES = """
import asyncio
import gc
import sys

import ml_collections

from phi3_jax import checkpoint


class LateWrite:
    def __init__(self, loop):
        self.loop = loop

    def __del__(self):
        self.loop.call_soon_threadsafe(print)


class Other:
    def __del__(self):
        raise ValueError("another unraisable error")


def abandoned_write(filename, message):
    code = f"async def write():\\n    raise OSError({message!r})\\n"
    scope = {}
    exec(compile(code, filename, "exec"), scope)

    async def start():
        asyncio.ensure_future(scope["write"]())
        await asyncio.sleep(0.01)

    asyncio.run(start())
    gc.collect()


loop = asyncio.new_event_loop()
loop.close()
LateWrite(loop)  # before the run's checkpoints: printed
config = ml_collections.ConfigDict({"checkpoint": {"max_to_keep": 1, "async_save": True}})
checkpoint.make_manager(sys.argv[1], config).close()
LateWrite(loop)  # with them: silent
Other()
abandoned_write("orbax/checkpoint/_src/serialization/serialization.py", "orbax's write")
abandoned_write("elsewhere.py", "another write")
print("done")
"""


def test_aborted_writes_of_a_failed_save_print_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _ABORTED_WRITES, str(tmp_path)],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr[-3000:]
    assert result.stderr.count("RuntimeError: Event loop is closed") == 1, result.stderr
    assert "another unraisable error" in result.stderr
    assert result.stderr.count("exception was never retrieved") == 1, result.stderr
    assert "another write" in result.stderr and "orbax's write" not in result.stderr


def launch_two(workdir, log_dir) -> subprocess.CompletedProcess:
    """The test_loop run's command on two processes of one CPU device each (launch/local.sh)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    train_args = command(workdir)[3:]  # the flags after `-m phi3_jax.train`
    return subprocess.run(
        [
            "bash",
            "launch/local.sh",
            "2",
            "--devices_per_process=1",
            f"--python={sys.executable}",
            f"--port={port}",
            f"--log_dir={log_dir}",
            "--",
            *train_args,
        ],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_refused_on_one_process(workdir) -> None:
    """A one-process resume of a two-process run's checkpoint is refused in one line, the
    checkpoint neither called corrupted nor moved."""
    before = steps_on_disk(workdir)
    result = run(workdir, check=False)
    assert result.returncode == 1 and "corrupted" not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {workdir}/checkpoints/{STEPS}: written by 2 processes, this run has 1: the data "
        "position is per process and does not carry over to another process count; resume with "
        "2 processes (the checkpoint is fine and left as it is)"
    )
    assert steps_on_disk(workdir) == before


def test_data_positions_of_two_processes_refused_on_one(straight, tmp_path):  # noqa: F811
    # The default suite's check of the refusal: the run's data positions renamed to those of a
    # two-process run (the real launches, 1 -> 2 and 2 -> 1, are the slow tests below).
    workdir = tmp_path / "renamed"
    shutil.copytree(straight, workdir)
    for step in steps_on_disk(workdir):
        data = workdir / checkpoint.CHECKPOINTS_DIR / step / "data"
        os.rename(data / "process_0-of-1.json", data / "process_0-of-2.json")
        shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
    assert_refused_on_one_process(workdir)


@pytest.mark.slow
def test_a_checkpoint_of_one_process_is_refused_on_two_not_called_corrupted(straight, tmp_path):  # noqa: F811
    workdir = tmp_path / "one"
    shutil.copytree(straight, workdir)
    before = steps_on_disk(workdir)
    result = launch_two(workdir, tmp_path / "logs")
    assert result.returncode != 0
    log = (tmp_path / "logs" / "process_0.log").read_text()
    assert "corrupted" not in log
    last = log.strip().splitlines()[-1]
    assert last == (
        f"error: {workdir}/checkpoints/{STEPS}: written by 1 processes, this run has 2: the data "
        "position is per process and does not carry over to another process count; resume with "
        "1 processes (the checkpoint is fine and left as it is)"
    ), log[-2000:]
    assert steps_on_disk(workdir) == before


def test_resuming_with_another_tokenizer_is_refused_naming_both(straight, tmp_path):  # noqa: F811
    workdir = tmp_path / "other_tokenizer"
    shutil.copytree(straight, workdir)
    before = steps_on_disk(workdir)
    other = {
        "data.tokenizer.kind": "tiktoken",
        "data.tokenizer.path": "data/tokenizer_small.tiktoken",
    }
    result = run(workdir, check=False, **other)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir}/checkpoints/{STEPS}: trained with the tokenizer "), (
        last
    )
    assert "sentencepiece:data/tokenizer.model (fingerprint " in last
    assert "this run has tiktoken:data/tokenizer_small.tiktoken (fingerprint " in last
    assert "corrupted" not in result.stdout and steps_on_disk(workdir) == before


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_is_refused_on_one_not_called_corrupted(tmp_path):
    workdir = tmp_path / "two"
    result = launch_two(workdir, tmp_path / "logs")
    assert result.returncode == 0, (tmp_path / "logs" / "process_0.log").read_text()[-3000:]
    assert steps_on_disk(workdir) == ["12", "6"]
    assert_refused_on_one_process(workdir)
