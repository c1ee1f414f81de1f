"""One process of the two-process train tests: joins the job, trains, and (process 0) saves results.

Usage: python multiprocess_worker.py COORDINATOR PROCESS_ID OUT.npz [sequence]
Each process has 4 CPU devices; together they form 8. Three steps run on the (2,2,2) mesh; the
same mesh built with its data axis as the cross-process (DCN) factor is saved for comparison.
With `sequence`: three steps of `sequence_config()` instead, every row split over all 8 devices
of the sequence axis, so over both processes.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from train_fixtures import run_steps, sequence_config, small_config  # noqa: E402

from phi3_jax import distributed, sharding  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def _device_ids(mesh) -> np.ndarray:
    return np.vectorize(lambda d: d.id)(mesh.devices)


def main(coordinator: str, process_id: int, out_path: str, mode: str = "") -> None:
    assert distributed.initialize(coordinator, num_processes=2, process_id=process_id)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    if mode == "sequence":
        config = sequence_config(8)
        results = {}
    else:
        config = small_config((2, 2, 2))
        dcn = small_config((1, 2, 2))
        dcn.mesh.dcn_data = 2
        results = {"mesh/dcn": _device_ids(sharding.make_mesh(dcn.mesh))}
    mesh = sharding.make_mesh(config.mesh)
    results["mesh/plain"] = _device_ids(mesh)
    results["mesh/process"] = np.vectorize(lambda d: d.process_index)(mesh.devices)
    history, params, _ = run_steps(config)
    results["loss"] = np.array([h["loss"] for h in history])
    results["grad_norm"] = np.array([h["grad_norm"] for h in history])
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        results[f"params/{jax.tree_util.keystr(path, simple=True, separator='/')}"] = leaf
    if process_id == 0:
        np.savez(out_path, **results)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
