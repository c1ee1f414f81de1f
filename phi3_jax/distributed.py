"""Joining the processes of a multi-process run (`jax.distributed.initialize`), before any JAX use.

Three cases: explicit coordinator / process count / process id (arguments, or the environment
variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) for local runs; JAX's own
cluster detection on TPU VMs and under SLURM; otherwise a single process, which needs nothing.
On CPU the processes' collectives run over gloo (JAX's default CPU implementation).
"""

from __future__ import annotations

import os

import jax

from phi3_jax.config import ConfigError

_ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def _cluster_detected() -> bool:
    """A multi-task SLURM step or a multi-host TPU VM, where JAX finds every argument itself."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm_tasks > 1 or "," in tpu_hosts


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the run's processes; returns False when this is a single-process run.

    Missing arguments are read from the environment. Explicit settings skip JAX's cluster
    detection (so a local run under SLURM is not mistaken for the job's own layout).
    """
    explicit = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    for key, env in _ENV.items():
        if explicit[key] is None and env in os.environ:
            value = os.environ[env]
            explicit[key] = value if key == "coordinator_address" else int(value)
    given = [key for key, value in explicit.items() if value is not None]
    if given and len(given) < len(explicit):
        missing = [f"{key} (or {_ENV[key]})" for key in explicit if key not in given]
        raise ConfigError(f"distributed={given}: also needs {', '.join(missing)}")
    if given:
        jax.distributed.initialize(**explicit, cluster_detection_method="deactivate")
        return True
    if _cluster_detected():
        jax.distributed.initialize()
        return True
    return False
