"""Every attention kernel equals the plain einsum path (outputs and q/k/v gradients, fp32, 1e-5)
on packed rows with padding, GQA, and with and without a sliding window, splash also inside
shard_map on a mesh of 8 CPU devices (interpreted); splash in shard_map compiles for a TPU slice
from this host; the selection follows the mesh's platform and falls back with a log line where a
kernel cannot run."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from phi3_jax import config, flops, sharding, tpu
from phi3_jax.model import attention, splash

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 128, 4, 2, 16
SCALE = HEAD_DIM**-0.5
TOL = 1e-5


def inputs(seed: int = 0):
    """q, k, v and segment ids: row 0 two documents, row 1 one document then padding."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, LENGTH, HEADS, HEAD_DIM))
    k, v = rng.normal(size=(2, BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    segment_ids = np.ones((BATCH, LENGTH), np.int32)
    segment_ids[0, 50:] = 2
    segment_ids[1, 100:] = 0
    arrays = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    return (*arrays, jnp.asarray(segment_ids))


def kernel(impl: str, window: int):
    """The kernel as a function of (q, k, v, segment_ids)."""
    if impl == "einsum":
        return lambda q, k, v, s: attention.einsum_attention(
            q, k, v, attention.attention_mask(s, window), SCALE
        )
    if impl == "xla":
        return lambda q, k, v, s: attention.dot_product_attention(q, k, v, s, SCALE, window, "xla")
    if impl == "splash":  # The TPU kernel, interpreted on the CPU.
        return lambda q, k, v, s: splash.splash_attention(q, k, v, s, SCALE, window, interpret=True)
    return lambda q, k, v, s: attention.chunked_attention(q, k, v, s, SCALE, window, chunk=32)


def output_and_grads(impl: str, window: int):
    """The kernel's output and the gradients of a random projection of it w.r.t. q, k, v."""
    q, k, v, segment_ids = inputs()
    fn = kernel(impl, window)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def objective(q, k, v):
        return jnp.sum(fn(q, k, v, segment_ids) * weights)

    out = jax.jit(fn)(q, k, v, segment_ids)
    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(q, k, v)
    return out, grads


@pytest.mark.parametrize("window", [0, 37])
@pytest.mark.parametrize("impl", ["xla", "chunked", "splash"])
def test_kernel_equals_plain_attention(impl, window):
    out, grads = output_and_grads(impl, window)
    ref_out, ref_grads = output_and_grads("einsum", window)
    # Measured: output <= 5e-7, gradients <= 4e-6.
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=TOL)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"d{name}")


def test_chunked_attention_never_forms_the_score_matrix():
    # Compiled temp memory at 2048 tokens: the plain path holds [heads, q, k] fp32 scores, the
    # chunked one [heads, q, chunk] blocks.
    length, chunk = 2048, 128
    q = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, KV_HEADS, HEAD_DIM), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, length), jnp.int32)

    def temp_bytes(fn) -> int:
        lowered = jax.jit(fn).lower(q, kv, kv, segments)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    scores_bytes = HEADS * length * length * 4
    chunked = temp_bytes(
        lambda q, k, v, s: attention.chunked_attention(q, k, v, s, SCALE, 0, chunk=chunk)
    )
    plain = temp_bytes(kernel("einsum", 0))
    assert plain >= scores_bytes
    assert chunked < scores_bytes / 4


def test_bf16_scores_are_close_and_halve_the_score_memory():
    # bf16 q, k, v as a bf16 model computes them; fp32 scores (HF) against bf16 (MaxText's).
    *qkv, segment_ids = inputs()
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv)
    mask = attention.attention_mask(segment_ids, 0)

    def fn(dtype):
        return jax.jit(lambda q, k, v: attention.einsum_attention(q, k, v, mask, SCALE, dtype))

    fp32, bf16 = fn(jnp.float32), fn(jnp.bfloat16)
    # Measured: 0.0156 at most, on outputs up to 3.3 (bf16 keeps 8 bits of mantissa).
    np.testing.assert_allclose(
        bf16(q, k, v).astype(jnp.float32), fp32(q, k, v).astype(jnp.float32), atol=0.05
    )

    def temp_bytes(dtype) -> int:
        grad = jax.grad(
            lambda q, k, v: jnp.sum(fn(dtype)(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)
        )
        return jax.jit(grad).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    # Measured (fwd + bwd temporaries): 2.52 MB against 1.74 MB; one fp32 score matrix is 0.52 MB.
    scores_bytes = BATCH * HEADS * LENGTH * LENGTH * 4
    assert temp_bytes(jnp.float32) - temp_bytes(jnp.bfloat16) > scores_bytes / 4


SELECTIONS = [
    # requested, platform, dtype, splash importable -> chosen, falls back
    ("einsum", "cpu", "float32", True, "einsum", False),
    ("chunked", "gpu", "bfloat16", True, "chunked", False),
    ("xla", "tpu", "bfloat16", True, "xla", False),
    ("cudnn", "gpu", "bfloat16", True, "cudnn", False),
    ("cudnn", "gpu", "float16", True, "cudnn", False),
    ("cudnn", "gpu", "float32", True, "xla", True),
    ("cudnn", "cpu", "bfloat16", True, "xla", True),
    ("cudnn", "tpu", "bfloat16", True, "xla", True),
    ("splash", "tpu", "bfloat16", True, "splash", False),
    ("splash", "tpu", "bfloat16", False, "xla", True),
    ("splash", "gpu", "bfloat16", True, "cudnn", True),
    ("splash", "gpu", "float32", True, "xla", True),
    ("splash", "cpu", "float32", True, "xla", True),
]


@pytest.mark.parametrize("requested,platform,dtype,available,chosen,falls_back", SELECTIONS)
def test_select(requested, platform, dtype, available, chosen, falls_back):
    got, why = attention.select(requested, platform, dtype, available)
    assert got == chosen
    assert bool(why) == falls_back


@pytest.mark.parametrize("requested", ["cudnn", "splash"])
def test_resolve_on_cpu_falls_back_to_xla_with_a_log_line(requested, caplog):
    attention.resolve.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        assert attention.resolve(requested, "bfloat16", "cpu") == "xla"
    assert f"model.attention={requested}" in caplog.text
    assert "using xla instead" in caplog.text


# (data, fsdp, sequence, tensor): rows over data x fsdp, heads and kv heads over tensor.
SPLIT = dict(data=2, fsdp=2, sequence=1, tensor=2)


def split_mesh(devices=None) -> jax.sharding.Mesh:
    mesh_config = config.default_mesh_config()
    mesh_config.update(SPLIT)
    return sharding.make_mesh(mesh_config, devices or jax.devices())


def four_rows():
    """`inputs` and their rows reversed: 4 rows, one per device of SPLIT's row axes."""
    return tuple(jnp.concatenate([x, x[::-1]]) for x in inputs())


def placed(fn, mesh):
    """fn under the default logical rules on `mesh`, its inputs placed as the model places them."""
    rules = sharding.logical_rules(config.default_config())
    specs = [
        ("batch", "length", "heads", None),
        *[("batch", "length", "kv_heads", None)] * 2,
        ("batch", "length"),
    ]

    def under_rules(*args):
        with sharding.activate(mesh, rules):
            return fn(*args)

    in_shardings = [NamedSharding(mesh, nn.logical_to_mesh_axes(spec, rules)) for spec in specs]
    return jax.jit(under_rules, in_shardings=in_shardings)


@pytest.mark.parametrize("window", [0, 37])
def test_splash_in_shard_map_equals_plain_attention(window):
    # 4 rows, 4 heads over 2 kv heads, split 4 ways by rows and 2 by heads on 8 CPU devices: each
    # device runs the interpreted kernel on 1 row, 2 heads and their 1 kv head.
    q, k, v, segment_ids = four_rows()
    mesh = split_mesh()
    sharded = placed(
        lambda q, k, v, s: splash.sharded_splash_attention(
            q, k, v, s, SCALE, window, interpret=True
        ),
        mesh,
    )
    weights = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)

    def grads(fn):
        return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, segment_ids) * weights), (0, 1, 2))(
            q, k, v
        )

    assert "shard_map" in str(jax.make_jaxpr(sharded)(q, k, v, segment_ids))
    plain = kernel("einsum", window)
    np.testing.assert_allclose(sharded(q, k, v, segment_ids), plain(q, k, v, segment_ids), atol=TOL)
    for name, got, want in zip("qkv", grads(sharded), grads(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"d{name}")


def test_splash_flops_are_counted_over_its_grid_and_devices():
    # XLA's cost analysis sees no dots inside a Pallas call; phi3_jax.flops counts grid x body
    # inside each device's shard_map body, times the 8 devices: a causal mask keeps every kv
    # block of the last query block, so the grid spans all blocks and the count equals the dense
    # forward's, 4 x rows x heads x length^2 x head_dim.
    q, k, v, segment_ids = four_rows()
    sharded = placed(
        lambda q, k, v, s: splash.sharded_splash_attention(q, k, v, s, SCALE, 0, interpret=True),
        split_mesh(),
    )
    jaxpr = jax.make_jaxpr(sharded)(q, k, v, segment_ids).jaxpr
    dense = 4 * q.shape[0] * HEADS * LENGTH**2 * HEAD_DIM
    assert flops.jaxpr_matmul_flops(jaxpr) == dense
    assert flops.jaxpr_matmul_flops(jaxpr, loop_trips=False) == 0


@pytest.mark.parametrize(
    "length, module, kernel",
    [(1, attention, "dot_product_attention"), (256, splash, "splash_attention")],
)
def test_splash_takes_rows_it_tiles_and_xla_the_others(length, module, kernel, monkeypatch):
    # On a TPU mesh; model init traces one-token rows, which splash cannot tile.
    model = config.default_config().model
    model.update(attention="splash", dtype="bfloat16")
    called = []
    monkeypatch.setattr(module, kernel, lambda q, *a, **k: called.append(kernel) or q)
    q = jax.ShapeDtypeStruct((4, length, HEADS, HEAD_DIM), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((4, length, HEADS, HEAD_DIM), jnp.bfloat16)
    segments = jax.ShapeDtypeStruct((4, length), jnp.int32)
    tpu_mesh = split_mesh(tpu.topology_devices(tpu.parse_topology("v5e-8")))
    with jax.sharding.use_abstract_mesh(tpu_mesh.abstract_mesh):
        jax.eval_shape(lambda *x: attention.attend(model, *x, decoding=False), q, kv, kv, segments)
    assert called == [kernel]


def test_the_target_platform_is_the_meshs():
    assert attention.target_platform() == "cpu"
    tpu_mesh = split_mesh(tpu.topology_devices(tpu.parse_topology("v5e-8")))
    with jax.sharding.use_abstract_mesh(tpu_mesh.abstract_mesh):
        assert attention.target_platform() == "tpu"


@pytest.mark.parametrize("window", [0, 2047])
def test_splash_in_shard_map_compiles_for_a_tpu_slice(window):
    # From this CPU host, with libtpu as the compiler: each of the 8 chips runs the Mosaic kernels
    # (forward, dq, dkv) on its shard, and no chip holds more than its rows' and heads' operands.
    mesh = split_mesh(tpu.topology_devices(tpu.parse_topology("v5e-8")))
    length, head_dim = 4096, 128
    q = jax.ShapeDtypeStruct((4, length, HEADS, head_dim), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((4, length, KV_HEADS, head_dim), jnp.bfloat16)
    segments = jax.ShapeDtypeStruct((4, length), jnp.int32)

    def loss(q, k, v, s):
        out = splash.sharded_splash_attention(q, k, v, s, head_dim**-0.5, window)
        return jnp.sum(out.astype(jnp.float32))

    fn = placed(jax.grad(loss, argnums=(0, 1, 2)), mesh)
    # Mosaic rejects fp32 contraction precision on bf16 operands (conftest asks for "highest").
    with jax.default_matmul_precision("default"):
        compiled = fn.lower(q, kv, kv, segments).compile()
    assert compiled.as_text().count("tpu_custom_call") == 3
    # Per chip 1 row and 2 heads. Measured 0.56 MiB of temporaries; the plain path holds the
    # row's fp32 scores, 2 x 4096^2 x 4 B = 128 MiB. (Without shard_map it does not compile:
    # "Mosaic kernels cannot be automatically partitioned".)
    assert compiled.memory_analysis().temp_size_in_bytes < length * length * 4 / 32
