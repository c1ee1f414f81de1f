"""A reduced-depth Phi-3-mini train step on one GPU (full width, 4 layers, rows of 4096 tokens,
bf16 compute, fp32 master weights, cuDNN attention, chunked cross-entropy): tokens/s and MFU
against the H100's 989 TFLOP/s dense bf16 peak. Skipped (no results.json entry) without a GPU.

    python -m bench.gpu_train [--gpu_batch=8] [--gpu_steps=10]
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags

from bench import cpu_train
from configs import phi3_mini
from phi3_jax import metrics, sharding, train

RESULT_KEY = "gpu"
H100_PEAK_FLOPS = 989e12

_BATCH = flags.DEFINE_integer("gpu_batch", 8, "rows of 4096 tokens per step")
_STEPS = flags.DEFINE_integer("gpu_steps", 10, "timed steps (after one compile step)")
_ATTENTION = flags.DEFINE_string("gpu_attention", "cudnn", "model.attention")


def gpu_config(batch: int, attention: str):
    config = phi3_mini.get_config()
    config.model.update(num_layers=4, dtype="bfloat16", attention=attention)
    config.train.update(global_batch_size=batch, seq_len=4096, microbatches=1, loss_chunk=1024)
    config.mesh.update(data=1, fsdp=1, sequence=1, tensor=1)
    config.optim.warmup_steps = 0
    return config


def run() -> dict[str, float] | None:
    """Time the step if a GPU is present; None (skipped) otherwise."""
    if jax.default_backend() != "gpu":
        print("gpu: skipped (no GPU)")
        return None
    config = gpu_config(_BATCH.value, _ATTENTION.value)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = train.init_state(config, mesh)
    batch = cpu_train.device_batch(config, mesh)
    step = train.make_train_step(config, mesh)
    state, _ = jax.block_until_ready(step(state, batch))
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, batch))
        times.append(time.perf_counter() - start)
    tokens_per_s = _BATCH.value * config.train.seq_len / statistics.median(times)
    mfu = metrics.flops_per_token(config)["model"] * tokens_per_s / H100_PEAK_FLOPS
    print(
        f"gpu: {jax.devices()[0].device_kind}, mini x 4 layers, batch {_BATCH.value} x 4096, bf16,"
        f" {_ATTENTION.value} attention: {tokens_per_s:,.0f} tokens/s, MFU {100 * mfu:.1f}%"
    )
    return {"tokens_per_s": tokens_per_s, "mfu": mfu, "step_seconds": statistics.median(times)}


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
