"""Chunked (flash-style, online softmax) attention against the plain einsum path at 2K, 8K and
32K tokens on this CPU: forward + backward wall time and the compiled temporary memory
(`memory_analysis()`). Batch 1, fp32, causal, packed into two documents; the plain path at 32K is
compiled only (its [heads, q, k] scores alone are 8 GiB), so only its memory is reported.

    python -m bench.attention [--attention_bench_heads=2] [--attention_bench_chunk=512]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from bench.blocksparse_attention import median_seconds
from phi3_jax.model import attention

_HEADS = flags.DEFINE_integer("attention_bench_heads", 2, "query (= kv) heads")
_CHUNK = flags.DEFINE_integer("attention_bench_chunk", 512, "keys per chunk")
_LENGTHS = flags.DEFINE_list("attention_bench_lengths", ["2048", "8192", "32768"], "tokens")
# Longest sequence whose plain path is timed (beyond it: memory only).
_PLAIN_MAX = flags.DEFINE_integer("attention_bench_plain_max", 8192, "longest timed plain run")

HEAD_DIM = 64


def forward_backward(impl: str, chunk: int):
    """d/d(q, k, v) of sum(attention * w): the attention work of one training step."""
    scale = HEAD_DIM**-0.5

    def fn(q, k, v, segment_ids, w):
        if impl == "einsum":
            out = attention.einsum_attention(
                q, k, v, attention.attention_mask(segment_ids, 0), scale
            )
        else:
            out = attention.chunked_attention(q, k, v, segment_ids, scale, 0, chunk)
        return jnp.sum(out * w)

    return jax.jit(jax.grad(fn, argnums=(0, 1, 2)))


def arrays(length: int, heads: int):
    rng = np.random.default_rng(0)
    q, k, v, w = (
        jnp.asarray(rng.normal(size=(1, length, heads, HEAD_DIM)), jnp.float32) for _ in range(4)
    )
    segment_ids = jnp.asarray(np.repeat([[1, 2]], length // 2, axis=1), jnp.int32)
    return q, k, v, segment_ids, w


def run() -> dict[str, dict[str, float]]:
    """Both paths at each length, printed and returned."""
    heads, chunk = _HEADS.value, _CHUNK.value
    figures = {}
    for length in map(int, _LENGTHS.value):
        args = arrays(length, heads)
        row = {}
        for impl in ("einsum", "chunked"):
            fn = forward_backward(impl, chunk)
            temp = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
            row[f"{impl}_temp_mib"] = temp / 2**20
            if impl == "chunked" or length <= _PLAIN_MAX.value:
                row[f"{impl}_seconds"] = median_seconds(fn, args, 1 if length > 8192 else 3)
        row["temp_ratio"] = row["einsum_temp_mib"] / row["chunked_temp_mib"]
        if "einsum_seconds" in row:
            row["time_ratio"] = row["einsum_seconds"] / row["chunked_seconds"]
        figures[str(length)] = row
        plain_time = f"{row['einsum_seconds']:.2f} s" if "einsum_seconds" in row else "not run"
        print(
            f"attention {length} tokens, {heads} heads x {HEAD_DIM}, fwd+bwd fp32: plain"
            f" {plain_time}, {row['einsum_temp_mib']:,.0f} MiB temp; chunked ({chunk})"
            f" {row['chunked_seconds']:.2f} s, {row['chunked_temp_mib']:,.0f} MiB temp"
        )
    return figures


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
