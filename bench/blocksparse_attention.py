"""Phi-3-small attention at 8K on this CPU: the blocksparse fast path against dense causal
attention (what Phi-3-small's odd layers run), forward pass, float32, batch 1, head_dim 128.

Compiled FLOPs and temporary memory (XLA's cost and memory analyses, compile only) are for the
full 32 query / 8 kv heads. Wall time is measured with fewer heads (default 8 / 2, a quarter of
the model's) so the dense [heads, seq, seq] scores fit in memory next to other work; both paths
are linear in the heads. Prints both figures and the ratios dense / blocksparse.

    python -m bench.blocksparse_attention [--attention_seq_len=8192] [--attention_heads=8]
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import phi3_small
from phi3_jax.model import attention, blocksparse, small

_SEQ_LEN = flags.DEFINE_integer("attention_seq_len", 8192, "tokens per row")
_HEADS = flags.DEFINE_integer("attention_heads", 8, "query heads of the timed runs")
_KV_HEADS = flags.DEFINE_integer("attention_kv_heads", 2, "kv heads of the timed runs")
_REPEATS = flags.DEFINE_integer("attention_repeats", 3, "timed runs of each path (median)")

HEAD_DIM = 128


def attention_functions(spec: blocksparse.BlocksparseSpec, scale: float) -> dict:
    """Both paths as jitted functions of (q, k, v, segment_ids)."""

    def fast(q, k, v, segment_ids):
        return blocksparse.blocksparse_attention(q, k, v, segment_ids, spec, scale)

    def dense(q, k, v, segment_ids):
        mask = attention.attention_mask(segment_ids, 0)
        return attention.einsum_attention(q, k, v, mask, scale)

    return {"blocksparse": jax.jit(fast), "dense": jax.jit(dense)}


def shapes(length: int, heads: int, kv_heads: int) -> tuple[jax.ShapeDtypeStruct, ...]:
    q = jax.ShapeDtypeStruct((1, length, heads, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, kv_heads, HEAD_DIM), jnp.float32)
    return q, kv, kv, jax.ShapeDtypeStruct((1, length), jnp.int32)


def compiled_cost(fn, args) -> tuple[float, float]:
    """(FLOPs, temporary bytes) of the compiled function."""
    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]), float(compiled.memory_analysis().temp_size_in_bytes)


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> dict[str, float]:
    """Measure both paths and print the figures; returns them."""
    model = phi3_small.get_config().model
    spec = blocksparse.BlocksparseSpec.from_model(model)
    functions = attention_functions(spec, small.softmax_scale(model))
    length = _SEQ_LEN.value
    full = shapes(length, model.num_heads, model.num_kv_heads)
    rng = np.random.default_rng(0)
    timed = [
        jnp.asarray(rng.normal(size=s.shape), s.dtype)
        for s in shapes(length, _HEADS.value, _KV_HEADS.value)[:3]
    ] + [jnp.ones((1, length), jnp.int32)]
    figures = {}
    for name, fn in functions.items():
        flops, temp = compiled_cost(fn, full)
        figures[f"{name}_gflops"] = flops / 1e9
        figures[f"{name}_temp_gib"] = temp / 2**30
        figures[f"{name}_seconds"] = median_seconds(fn, timed, _REPEATS.value)
    for key in ("gflops", "temp_gib", "seconds"):
        figures[f"{key}_ratio"] = figures[f"dense_{key}"] / figures[f"blocksparse_{key}"]
    f = figures
    print(
        f"blocksparse_attention: seq {length}, head_dim {HEAD_DIM}, float32, {os.cpu_count()} CPUs\n"
        f"  compiled, {model.num_heads}/{model.num_kv_heads} heads:"
        f" dense {f['dense_gflops']:,.0f} GFLOP, {f['dense_temp_gib']:.2f} GiB temp;"
        f" blocksparse {f['blocksparse_gflops']:,.0f} GFLOP, {f['blocksparse_temp_gib']:.2f} GiB"
        f" temp\n"
        f"  wall, {_HEADS.value}/{_KV_HEADS.value} heads (median of {_REPEATS.value}):"
        f" dense {f['dense_seconds']:.2f} s, blocksparse {f['blocksparse_seconds']:.2f} s\n"
        f"  ratio dense / blocksparse: FLOPs {f['gflops_ratio']:.2f},"
        f" temp memory {f['temp_gib_ratio']:.2f}, time {f['seconds_ratio']:.2f}"
    )
    return figures


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
