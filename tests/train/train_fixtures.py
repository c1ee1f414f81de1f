"""Shared pieces of the train tests: a small config, a packed batch, a few steps on a mesh, and
the config of whole in-process runs on the bundled corpus.

Also imported by the multi-process worker script, so it must not import anything from pytest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from configs import phi3_tiny
from phi3_jax import config as config_lib
from phi3_jax import sharding, train

SEQ_LEN = 16
BATCH = 8
STEPS = 3


def small_config(mesh=(1, 1, 1), **train_overrides):
    """The tiny model with a 512-token vocabulary, 8 rows of 16 tokens, full lr from step 0."""
    config = phi3_tiny.get_config()
    config.model.update(vocab_size=512, eos_token_id=2, pad_token_id=0)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
    config.train.seq_len = SEQ_LEN
    config.train.global_batch_size = BATCH
    config.train.steps = 10
    config.train.update(train_overrides)
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 0
    # Adam divides by sqrt(v) + eps. At the default 1e-8, gradient entries near 1e-8 (where fp32
    # reduction-order noise across meshes is ~5e-9) make the update jump by up to half the
    # learning rate; 1e-6 keeps it a smooth function of the gradient, so meshes can be compared.
    config.optim.eps = 1e-6
    return config_lib.validate(config)


def sequence_config(sequence: int):
    """small_config's model on 8 rows of 64 tokens, each row split over `sequence` devices of the
    sequence axis (chunked attention, 16-key chunks: each chunk is gathered over the axis)."""
    config = small_config((1, 1, 1), seq_len=64)
    config.mesh.sequence = sequence
    config.model.update(attention="chunked", attention_chunk=16)
    return config_lib.validate(config)


def packed_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows packed with two documents and trailing padding (segment 0, loss mask 0)."""
    rng = np.random.default_rng(seed)
    batch, length = config.train.global_batch_size, config.train.seq_len
    tokens = rng.integers(3, config.model.vocab_size, (batch, length + 1), dtype=np.int32)
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    for row in range(batch):
        first = 4 + row % 5  # first document's length
        real = length - row % 3  # tokens before the padding
        segment_ids[row, :first] = 1
        segment_ids[row, first:real] = 2
        positions[row, :first] = np.arange(first)
        positions[row, first:real] = np.arange(real - first)
    return {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "positions": positions,
        "segment_ids": segment_ids,
        "loss_mask": (segment_ids > 0).astype(np.int32),
    }


def run_steps(config, devices=None, initial=None, steps: int = STEPS):
    """`steps` train steps on the config's mesh over `devices`, from `initial` (a TrainState on
    any devices, copied onto this mesh's shardings) or else from `train.init_state`.

    Each process feeds only its own rows of the batch. Returns (per-step metrics as floats,
    final params as host numpy arrays, the final state).
    """
    mesh = sharding.make_mesh(config.mesh, devices)
    batch_sharding = train.batch_shardings(config, mesh)["tokens"]
    rows = sharding.process_rows(batch_sharding, config.train.global_batch_size)
    local = {key: value[rows] for key, value in packed_batch(config).items()}
    batch = sharding.global_batch(local, batch_sharding, config.train.global_batch_size)
    step = train.make_train_step(config, mesh)
    if initial is None:
        state = train.init_state(config, mesh)
    else:
        # Copied first: the step donates its input, and device_put may alias the source buffers
        # (it does for replicated scalars even with may_alias=False in jax 0.10.2).
        state = jax.device_put(jax.tree.map(jnp.copy, initial), train.state_shardings(config, mesh))
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        history.append({key: float(value) for key, value in metrics.items()})
    # Gathered from every process (a no-op copy to host with one process).
    params = multihost_utils.process_allgather(state.params, tiled=True)
    return history, params, state


def run_config(**overrides):
    """configs/phi3_tiny.py for in-process runs: 8 rows (one per device) of 32 tokens."""
    config = phi3_tiny.get_config()
    config.train.update(seq_len=32, global_batch_size=8)
    config.data.num_workers = 0
    config.log.update(every_steps=1, peak_flops=1e10)
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config_lib.validate(config)
