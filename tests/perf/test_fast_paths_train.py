"""The fast paths in the sharded train step: two steps with each attention kernel, chunked
cross-entropy, projections over flat tokens and sequence parallelism on the 8-device emulated
mesh give the plain path's losses, gradient norms and parameters (fp32, 1e-5)."""

from __future__ import annotations

import functools
import pathlib
import sys

import jax
import numpy as np
import pytest

from phi3_jax import config as config_lib
from phi3_jax import model, sharding, train

# The train tests' small config, packed batch and step runner.
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "train"))
from train_fixtures import packed_batch, run_steps, small_config  # noqa: E402

TOL = 1e-5
STEPS = 2
# (data, fsdp, sequence, tensor)
PLAIN_MESH = (2, 2, 1, 2)


def fast_config(mesh=PLAIN_MESH, **model_overrides):
    """The train tests' tiny model with GQA, a sliding window shorter than the rows, and rows of
    32 tokens; `train.loss_chunk` and `train.cpu_dot_fusion` ride along in model_overrides."""
    config = small_config(mesh[:2] + mesh[3:], seq_len=32)
    config.mesh.sequence = mesh[2]
    config.train.loss_chunk = model_overrides.pop("loss_chunk", 0)
    config.train.cpu_dot_fusion = model_overrides.pop("cpu_dot_fusion", "dots_only")
    config.model.update(num_kv_heads=2, sliding_window=6, attention_chunk=8, **model_overrides)
    return config_lib.validate(config)


@functools.cache
def initial_state():
    """The seed's initial state, made on one device (every run starts from these values)."""
    config = fast_config((1, 1, 1, 1))
    return train.init_state(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))


@functools.cache
def run(mesh=PLAIN_MESH, **overrides):
    return run_steps(fast_config(mesh, **overrides), None, initial_state(), steps=STEPS)


def assert_same_run(actual, reference) -> None:
    history, params, _ = actual
    ref_history, ref_params, _ = reference
    for got, want in zip(history, ref_history, strict=True):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(got[key], want[key], rtol=TOL, err_msg=key)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention="chunked"),
        dict(attention="xla"),
        # Falls back to xla on CPU.
        dict(attention="cudnn"),
        dict(loss_chunk=8),
        # The default compiles each dot alone for YNNPACK; XLA's own fusions are the plain path.
        dict(cpu_dot_fusion="xla"),
        # Batch and length flattened into one token axis around each projection.
        dict(flat_projections=True),
        pytest.param(dict(attention="chunked", loss_chunk=4), marks=pytest.mark.slow),
    ],
    ids=[
        "chunked",
        "xla",
        "cudnn-falls-back",
        "loss_chunk",
        "cpu-dot-fusion-xla",
        "flat-projections",
        "chunked+loss_chunk",
    ],
)
def test_fast_path_trains_like_the_plain_path(overrides):
    assert_same_run(run(**overrides), run())


def test_cpu_dot_fusion_reaches_the_cpu_compile():
    config = fast_config((1, 1, 1, 1))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    shapes = [
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
        for tree in (initial_state(), packed_batch(config))
    ]
    compiled = {}
    for fusion in config_lib.CPU_DOT_FUSIONS:
        config.train.cpu_dot_fusion = fusion
        step = train.make_train_step(config, mesh)
        compiled[fusion] = step.lower(*shapes).compile().as_text()
    config.train.cpu_dot_fusion = "xla"
    assert train.step.compiler_options(config, mesh) == {}
    config.train.cpu_dot_fusion = "dots_only"
    option = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    assert train.step.compiler_options(config, mesh) == option
    assert compiled["dots_only"] != compiled["xla"]


@pytest.mark.parametrize(
    "mesh,overrides",
    [
        ((1, 2, 4, 1), dict(attention="chunked", loss_chunk=8)),
        pytest.param((1, 1, 8, 1), dict(attention="chunked"), marks=pytest.mark.slow),
        ((2, 1, 2, 2), dict()),
        # The flattened token axis split over data and sequence at once.
        ((2, 1, 2, 2), dict(flat_projections=True)),
    ],
    ids=["fsdp2-seq4-chunked", "seq8-chunked", "data2-seq2-tensor2-einsum", "data2-seq2-flat"],
)
def test_sequence_parallel_trains_like_the_plain_path(mesh, overrides):
    assert_same_run(run(mesh, **overrides), run())


def test_activations_are_split_along_the_sequence():
    config = fast_config((1, 1, 8, 1), attention="chunked")
    mesh = sharding.make_mesh(config.mesh)
    batch = sharding.global_batch(
        packed_batch(config),
        train.batch_shardings(config, mesh)["tokens"],
        config.train.global_batch_size,
    )
    params = jax.device_put(initial_state().params, train.param_shardings(config, mesh))

    @jax.jit
    def hidden(params, batch):
        with sharding.activate(mesh, sharding.logical_rules(config)):
            return model.hidden_states(
                config,
                params,
                batch["tokens"],
                positions=batch["positions"],
                segment_ids=batch["segment_ids"],
            )

    out = hidden(params, batch)
    # 32 positions over 8 devices: each holds 4 positions of every row.
    assert {shard.data.shape for shard in out.addressable_shards} == {(8, 4, 128)}


def test_hidden_states_then_lm_head_equal_logits():
    config = fast_config()
    params = initial_state().params
    tokens = packed_batch(config)["tokens"]
    hidden = model.hidden_states(config, params, tokens)
    np.testing.assert_allclose(
        model.lm_head_logits(config, params, hidden),
        model.logits(config, params, tokens),
        rtol=0,
        atol=TOL,
    )


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.loss_chunk", 5, "must divide train.seq_len=32"),
        ("train.loss_chunk", -1, "must be an integer >= 0"),
        ("model.attention_chunk", 12, "must divide train.seq_len=32"),
        ("model.attention", "flash", "must be one of einsum, xla, cudnn, splash, chunked"),
        (
            "model.attention",
            "splash",
            "needs rows of a multiple of 128 tokens, not train.seq_len=32",
        ),
        (
            "model.attention_score_dtype",
            "bfloat16",
            "is read by the einsum kernel only, not model.attention='chunked'",
        ),
        ("model.attention_score_dtype", "float16", "must be one of float32, bfloat16"),
        ("train.cpu_dot_fusion", "ynn", "must be one of \\('xla', 'dots_only'\\)"),
    ],
)
def test_bad_fast_path_settings_are_one_line_errors(key, value, message):
    config = fast_config(attention="chunked")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=f"{key}={value!r}: {message}"):
        config_lib.validate(config)


def test_splash_refuses_a_split_sequence():
    config = fast_config()
    config.model.attention, config.train.seq_len, config.mesh.sequence = "splash", 128, 2
    message = "model.attention='splash': does not split the sequence: mesh.sequence must be 1"
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)
