"""Joining the processes of a run (distributed.py): settings checked in one line, one process a
no-op."""

from __future__ import annotations

import jax
from test_sharding import raises_one_line

from phi3_jax import distributed


def test_distributed_needs_all_three_settings(monkeypatch):
    for env in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with raises_one_line(
        r"also needs coordinator_address \(or JAX_COORDINATOR_ADDRESS\), process_id"
    ):
        distributed.initialize()


def test_distributed_single_process_is_a_no_op(monkeypatch):
    for env in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(env, raising=False)
    assert distributed.initialize() is False
    assert jax.process_count() == 1
