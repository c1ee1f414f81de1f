"""`python -m phi3_jax.serve` without a model to serve stops before it listens, its last line
naming what to give. (The server itself: tests/serve/test_server.py.)"""

from __future__ import annotations

import os
import subprocess
import sys


def test_no_model_source_is_one_line_naming_the_flags():
    result = subprocess.run(
        [sys.executable, "-m", "phi3_jax.serve", "--port=0"],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == "give exactly one of workdir and hf_dir"
