"""`python -m phi3_jax.model.summary`: every parameter with its shape and logical axes, and the
total."""

from __future__ import annotations

from cli_fixtures import run_module


def test_summary_cli():
    result = run_module("phi3_jax.model.summary", "--config=configs/phi3_medium.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "total: 13,960,238,080 parameters"
    assert any(
        line.split()[0] == "layers/self_attn/k_proj/kernel"
        and "(40, 5120, 10, 128)" in line
        and "('layers', 'embed', 'kv_heads', 'head_dim')" in line
        for line in lines
    )
