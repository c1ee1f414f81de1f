"""Mistakes on the train command line end in one line naming the flag, key, file or value, before
anything compiles and without leaving an empty workdir behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_loop import REPO, environment

TINY = "--config=configs/phi3_tiny.py"


# One case per code path in the default suite; the others are slow (make test-all): a key typo is
# reported like a section typo, a recipe's unknown argument like an unknown preset, an invalid
# variant like any ConfigError (the full-size recipe's; its validation is test_model_core's).
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            [TINY, "--config.optimm.lr=1"],
            "error: --config.optimm.lr: unknown config section (did you mean optim?)",
        ),
        pytest.param(
            [TINY, "--config.optim.lrr=1"],
            "error: --config.optim.lrr: unknown config key (did you mean lr?)",
            marks=pytest.mark.slow,
        ),
        (
            ["--config=configs/phi3_mini.py:tpu=v9"],
            "error: --config=configs/phi3_mini.py:tpu=v9: preset='tpu=v9': unknown for mini; "
            "expected one of gpu=h100x64, tpu=v4-128, tpu=v5e-256, tpu=v5p-128",
        ),
        (
            ["--config=configs/nope.py"],
            f"error: --config=configs/nope.py: no such config file {REPO}/configs/nope.py",
        ),
        pytest.param(
            ["--config=configs/phi3_tiny.py:huge"],
            "error: --config=configs/phi3_tiny.py:huge: unknown argument 'huge'; the tiny config "
            "takes none",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            [TINY, "--config.variant=huge"],
            "error: variant='huge': unknown; expected one of tiny, mini, mini_128k, small, "
            "small_tiny, medium, hf",
            marks=pytest.mark.slow,
        ),
        (
            # A full-size recipe names its sources; where their shards are is the run's to say.
            ["--config=configs/phi3_mini.py"],
            "error: data.sources.web.globs='': not set; point --config.data.sources.web.globs "
            "at the shards to train on (phi3_jax.data.prepare and phi3_jax.data.synthetic write "
            "them)",
        ),
        (
            [TINY, "--config.data.tokenizer.path=/nope/tok.model"],
            "error: data.tokenizer.path='/nope/tok.model' (kind sentencepiece): /nope/tok.model: "
            "no such sentencepiece model",
        ),
    ],
)
def test_a_command_line_mistake_is_one_line(tmp_path, args, line):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "phi3_jax.train", f"--workdir={workdir}", *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == line
    assert not os.path.exists(workdir)
