"""A training run whose --workdir is an emulated gs:// or s3:// bucket, through the CLI: SIGKILLed
after a checkpoint, resumed, it ends bitwise equal to the same run made straight on local disk; then
`plot`, `generate`, `eval` and `convert` read it from the bucket.

The runs are tests/train/test_loop.py's (its model, overrides and helpers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from phi3_jax import checkpoint, metrics, paths, plot
from phi3_jax.checkpoint import params as params_checkpoint
from tests.train import test_loop as cli

pytestmark = (
    pytest.mark.slow
)  # three training runs and four CLI calls (see README: Runs on buckets)


# Minutes per run on a loaded 2-core machine (test_loop.run allows 5).
TIMEOUT_S = 1200


def _checked(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command,
        cwd=cli.REPO,
        env=cli.environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _run(workdir: str) -> subprocess.CompletedProcess:
    return _checked(cli.command(workdir))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run made straight on local disk."""
    workdir = str(tmp_path_factory.mktemp("local") / "straight")
    assert "starting from a random init" in _run(workdir).stdout
    return workdir


def _killed_and_resumed(emulator) -> str:
    """A run on a new bucket of `emulator`, SIGKILLed once its middle checkpoint is committed,
    then resumed; its workdir."""
    workdir = paths.join(emulator.create_bucket(), "run")
    middle = cli.STEPS // 2
    committed = paths.path(
        paths.join(workdir, checkpoint.CHECKPOINTS_DIR, str(middle), "commit_success.txt")
    )
    process = cli.start(workdir)
    # Polled while the run goes on: a run frozen with SIGSTOP (as test_loop does) can hold the
    # emulator's lock on an upload it has begun, and the check would wait on it forever. The
    # final step's save starts only after this one is committed, and takes longer than a poll.
    deadline = time.monotonic() + TIMEOUT_S
    while not committed.exists():
        assert process.poll() is None, "the run ended before its middle checkpoint"
        assert time.monotonic() < deadline, "no middle checkpoint in time"
        time.sleep(0.05)
    process.kill()
    process.wait()
    # Both buckets mark a complete step by its commit file (orbax's default on gs://).
    manager = ocp.CheckpointManager(
        paths.join(workdir, checkpoint.CHECKPOINTS_DIR),
        options=ocp.CheckpointManagerOptions(
            read_only=True, atomicity_options=checkpoint.s3.ATOMICITY
        ),
    )
    assert manager.all_steps() == [middle]
    resumed = _run(workdir)
    assert f"resuming from step {middle}" in resumed.stdout
    return workdir


@pytest.fixture(scope="module")
def bucket_run(gcs, straight):
    """The run on the gs:// bucket, killed after its middle checkpoint and resumed."""
    return _killed_and_resumed(gcs)


@pytest.fixture(scope="module")
def s3_run(s3, straight):
    """The same on the s3:// bucket (orbax's arrays through `checkpoint.s3`)."""
    return _killed_and_resumed(s3)


@pytest.mark.parametrize("run", ["bucket_run", "s3_run"])
def test_killed_and_resumed_on_the_bucket_equals_the_local_straight_run(request, run, straight):
    bucket_run = request.getfixturevalue(run)
    expected, got = cli.losses(straight), cli.losses(bucket_run)
    for step in range(cli.STEPS // 2 + 1, cli.STEPS + 1):
        assert got[step] == expected[step], step  # bitwise: exact float equality
    for a, b in zip(
        cli.saved_params(straight, cli.STEPS),
        cli.saved_params(bucket_run, cli.STEPS),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # TensorBoard events: the resumed run's file (the killed run's only if it flushed in time).
    assert len(paths.glob(paths.join(bucket_run, metrics.TB_DIR, "events.out.tfevents.*"))) >= 1


def test_plot_writes_into_the_bucket(bucket_run):
    written = plot.plot(bucket_run)
    assert written == paths.join(bucket_run, plot.PLOT_FILE)
    assert paths.path(written).read_bytes().startswith(b"\x89PNG")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return _checked([sys.executable, "-m", *args])


def test_generate_reads_the_run_from_the_bucket(bucket_run):
    result = _cli(
        "phi3_jax.generate", f"--workdir={bucket_run}", "--prompt=The", "--max_new_tokens=4"
    )
    assert result.stdout.strip()


def test_eval_reads_the_run_from_the_bucket_and_writes_there(bucket_run, tmp_path):
    corpus = tmp_path / "held_out.jsonl"
    corpus.write_text(json.dumps({"text": "The list type supports indexing."}) + "\n")
    output = paths.join(bucket_run, "eval.json")
    _cli(
        "phi3_jax.eval",
        f"--workdir={bucket_run}",
        f"--tasks=ppl:{corpus}",
        f"--output={output}",
    )
    report = json.loads(paths.path(output).read_text())
    assert report["source"]["workdir"] == bucket_run


def test_convert_exports_the_bucket_run_to_the_bucket_and_back(bucket_run, straight):
    hf_dir = paths.join(bucket_run, "hf")
    _cli("phi3_jax.convert", "orbax-to-hf", f"--ckpt={bucket_run}", f"--out={hf_dir}")
    assert paths.path(paths.join(hf_dir, "config.json")).is_file()
    params_dir = paths.join(bucket_run, "params")
    _cli("phi3_jax.convert", "hf-to-orbax", f"--hf_dir={hf_dir}", f"--out={params_dir}")
    _, params = params_checkpoint.load_params_checkpoint(params_dir)
    expected = cli.saved_params(straight, cli.STEPS)
    for a, b in zip(expected, jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
