"""The sharded train step: the same numbers on every mesh, the intended shardings, accumulation
equal to one big batch, and the loss against a numpy reference."""

from __future__ import annotations

import functools
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from train_fixtures import packed_batch, run_steps, sequence_config, small_config

from phi3_jax import sharding, train

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")
REPO = WORKER.parents[2]
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4), (2, 4, 1)]


@functools.cache
def initial_state():
    """The seed's initial state, made on one device."""
    config = small_config()
    return train.init_state(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))


@functools.cache
def run_on(mesh):
    """Three steps on `mesh` from the same initial values; (1,1,1) runs on one device. Cached
    across this module's tests."""
    devices = jax.devices()[:1] if mesh == (1, 1, 1) else None
    return run_steps(small_config(mesh), devices, initial_state())


def relative_norm_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def assert_same_run(actual, reference, tol: float = 1e-5) -> None:
    """Per-step losses and grad norms to `tol` relative; final params to `tol`, both
    elementwise (absolute) and per leaf in relative L2 norm."""
    history, params, _ = actual
    ref_history, ref_params, _ = reference
    for got, want in zip(history, ref_history, strict=True):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(got[key], want[key], rtol=tol, err_msg=key)
        assert got["tokens"] == want["tokens"]
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        assert relative_norm_error(got, want) <= tol


def test_reference_run_learns():
    history, _, _ = run_on((1, 1, 1))
    losses = [h["loss"] for h in history]
    # A fresh 512-token model starts near ln(512) = 6.238 and the fixed batch is then fitted.
    assert abs(losses[0] - np.log(512)) < 0.1
    assert losses[0] > losses[1] > losses[2]
    assert history[0]["tokens"] == 8 * 16 - (0 + 1 + 2 + 0 + 1 + 2 + 0 + 1)
    assert history[0]["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_same_losses_and_params_on_every_mesh(mesh):
    assert_same_run(run_on(mesh), run_on((1, 1, 1)))


# (2,2,2) mesh, small config: logical spec from the rules and each device's shard shape.
EXPECTED_PARAM_LAYOUT = {
    "embed_tokens/embedding": (("tensor", "fsdp"), (256, 64)),
    "layers/input_layernorm/scale": ((None, "fsdp"), (4, 64)),
    "layers/post_attention_layernorm/scale": ((None, "fsdp"), (4, 64)),
    "layers/mlp/gate_proj/kernel": ((None, "fsdp", "tensor"), (4, 64, 192)),
    "layers/mlp/up_proj/kernel": ((None, "fsdp", "tensor"), (4, 64, 192)),
    "layers/mlp/down_proj/kernel": ((None, "tensor", "fsdp"), (4, 192, 64)),
    "layers/self_attn/q_proj/kernel": ((None, "fsdp", "tensor", None), (4, 64, 2, 32)),
    "layers/self_attn/k_proj/kernel": ((None, "fsdp", "tensor", None), (4, 64, 2, 32)),
    "layers/self_attn/v_proj/kernel": ((None, "fsdp", "tensor", None), (4, 64, 2, 32)),
    "layers/self_attn/o_proj/kernel": ((None, "tensor", None, "fsdp"), (4, 2, 32, 64)),
    "lm_head/kernel": (("fsdp", "tensor"), (64, 256)),
    "norm/scale": (("fsdp",), (64,)),
}


def _layout(array) -> tuple[tuple, set]:
    spec = tuple(array.sharding.spec) + (None,) * (array.ndim - len(array.sharding.spec))
    return spec, {shard.data.shape for shard in array.addressable_shards}


def _by_path(tree) -> dict:
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p, simple=True, separator="/"): leaf for p, leaf in flat}


def assert_2x2x2_layout(state) -> None:
    adam = state.opt_state[1][0]  # (clip, (adam, decay mask, lr schedule))
    for tree in (state.params, adam.mu, adam.nu):
        arrays = _by_path(tree)
        assert set(arrays) == set(EXPECTED_PARAM_LAYOUT)
        for path, (spec, shard_shape) in EXPECTED_PARAM_LAYOUT.items():
            assert _layout(arrays[path]) == (spec, {shard_shape}), path
            assert len(arrays[path].addressable_shards) == 8
    for scalar in (state.step, state.rng, adam.count):
        assert scalar.sharding.spec == PartitionSpec()


def test_train_step_keeps_the_2x2x2_layout():
    _, _, state = run_on((2, 2, 2))
    assert int(state.step) == 3
    assert_2x2x2_layout(state)


def test_init_builds_shards_equal_to_a_one_device_init():
    config = small_config((2, 2, 2))
    state = train.init_state(config, sharding.make_mesh(config.mesh))
    assert_2x2x2_layout(state)
    reference = initial_state()
    params, ref_params = jax.tree.leaves(state.params), jax.tree.leaves(reference.params)
    for got, want in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        jax.random.key_data(state.rng), jax.random.key_data(reference.rng)
    )


def test_batch_sharding_on_2x2x2():
    config = small_config((2, 2, 2))
    mesh = sharding.make_mesh(config.mesh)
    tokens = jax.device_put(
        packed_batch(config)["tokens"], train.batch_shardings(config, mesh)["tokens"]
    )
    spec, shard_shapes = _layout(tokens)
    assert spec[0] == ("data", "fsdp")
    assert shard_shapes == {(2, 16)}
    # Rows r..r+1 live on the 2 tensor-replicas of batch shard r // 2.
    rows = {d.id: i[0].start for d, i in tokens.sharding.devices_indices_map(tokens.shape).items()}
    assert sorted(rows.values()) == [0, 0, 2, 2, 4, 4, 6, 6]


def _grads_and_step(config, mesh, batch, params):
    rules = sharding.logical_rules(config)

    @jax.jit
    def grads(params, batch):
        with sharding.activate(mesh, rules):
            return train.loss_and_grads(config, params, batch)

    return grads(params, batch)


def test_four_microbatches_equal_one_batch():
    mesh_shape = (1, 2, 4)
    whole, split = small_config(mesh_shape), small_config(mesh_shape, microbatches=4)
    mesh = sharding.make_mesh(whole.mesh)
    batch_sharding = train.batch_shardings(whole, mesh)["tokens"]
    batch = {k: jax.device_put(v, batch_sharding) for k, v in packed_batch(whole).items()}
    params = train.init_state(whole, mesh).params
    grads_1, metrics_1 = _grads_and_step(whole, mesh, batch, params)
    grads_4, metrics_4 = _grads_and_step(split, mesh, batch, params)
    for key in ("loss", "tokens"):
        np.testing.assert_allclose(metrics_4[key], metrics_1[key], rtol=1e-6, atol=0)
    for got, want in zip(jax.tree.leaves(grads_4), jax.tree.leaves(grads_1), strict=True):
        got, want = np.asarray(got), np.asarray(want)
        assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(tmp_path, *mode: str):
    """The results multiprocess_worker.py saves, run as two processes of 4 CPU devices."""
    out = tmp_path / "results.npz"
    coordinator = f"localhost:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), coordinator, str(pid), str(out), *mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
    return np.load(out)


def assert_worker_results(results, history, params) -> None:
    """The workers' losses, grad norms and final params equal a reference run's (1e-5)."""
    np.testing.assert_allclose(results["loss"], [h["loss"] for h in history], rtol=1e-5)
    np.testing.assert_allclose(results["grad_norm"], [h["grad_norm"] for h in history], rtol=1e-5)
    for path, want in _by_path(params).items():
        got = results[f"params/{path}"]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert relative_norm_error(got, want) <= 1e-5


def test_two_processes_match_one(tmp_path):
    results = two_processes(tmp_path)
    # Process p owns every device at data index p, and the DCN-built mesh is that arrangement.
    process = results["mesh/process"].reshape(2, -1)
    np.testing.assert_array_equal(process, [[0] * 4, [1] * 4])
    np.testing.assert_array_equal(results["mesh/dcn"], results["mesh/plain"])
    history, params, _ = run_on((1, 1, 1))
    assert_worker_results(results, history, params)


@pytest.mark.slow  # two processes compiling the chunked step (17 min at load 26 on 2 cores)
def test_rows_split_over_two_processes_match_one_device(tmp_path):
    """Sequence parallelism across processes: every row's 64 tokens over the 8 devices of the
    sequence axis, 4 in each process (each process feeds whole rows, its devices take their
    parts); losses, grad norms and params equal one device's."""
    results = two_processes(tmp_path, "sequence")
    np.testing.assert_array_equal(results["mesh/process"].reshape(-1), [0] * 4 + [1] * 4)
    assert results["mesh/process"].shape == (1, 1, 8, 1)
    history, params, _ = run_steps(sequence_config(1), jax.devices()[:1], initial_state())
    assert_worker_results(results, history, params)
