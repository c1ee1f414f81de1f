"""A reduced-depth Phi-3-mini train step on one GPU (full width, `--gpu_layers` layers, rows of
4096 tokens, bf16 compute, fp32 master weights, cuDNN attention, chunked cross-entropy), once per
remat policy (`--gpu_remat`, default none and dots): tokens/s and MFU against the device's dense
bf16 peak (`phi3_jax.metrics.PEAK_FLOPS`: H100 and H200 989 TFLOP/s). Skipped (no results.json
entry) without a GPU.

`--dry_run` runs anywhere: it compiles each step on this backend from shapes alone (nothing is
allocated; cuDNN falls back to XLA attention off a GPU) and prints what a GPU run would measure,
times nothing. The test suite runs it so the script cannot rot where no GPU is lent.

    python -m bench.gpu_train [--gpu_batch=8] [--gpu_steps=10] [--gpu_layers=4] [--dry_run]
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags

from bench import cpu_train
from configs import phi3_mini
from phi3_jax import aot, metrics, sharding, train

RESULT_KEY = "gpu"
SEQ_LEN = 4096

_BATCH = flags.DEFINE_integer("gpu_batch", 8, "rows of 4096 tokens per step")
_STEPS = flags.DEFINE_integer("gpu_steps", 10, "timed steps (after one compile step)")
_LAYERS = flags.DEFINE_integer("gpu_layers", 4, "layers of the full-width mini")
_REMATS = flags.DEFINE_list("gpu_remat", ["none", "dots"], "remat policies, one run each")
_ATTENTION = flags.DEFINE_string("gpu_attention", "cudnn", "model.attention")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "compile only, on any backend; print the plan")


def gpu_config(batch: int, attention: str, layers: int = 4, remat: str = "none"):
    """Phi-3-mini at full width and `layers` deep, one device, bf16, the loss in chunks."""
    config = phi3_mini.get_config()
    config.model.update(num_layers=layers, dtype="bfloat16", attention=attention, remat=remat)
    config.train.update(global_batch_size=batch, seq_len=SEQ_LEN, microbatches=1, loss_chunk=1024)
    config.mesh.update(data=1, fsdp=1, sequence=1, tensor=1)
    config.optim.warmup_steps = 0
    return config


def device_peak(device: jax.Device) -> float | None:
    """Dense bf16 peak FLOP/s of one device from the table; None if it is not listed."""
    return next((peak for kind, peak in metrics.PEAK_FLOPS if kind in device.device_kind), None)


def dry_run(config, steps: int = 10) -> dict:
    """Compile the step from shapes on this backend; what a run would measure, and the
    compiled per-device memory."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    state = train.abstract_state(config, mesh)
    batch = aot.abstract_batch(config, mesh)
    start = time.perf_counter()
    compiled = train.make_train_step(config, mesh).trace(state, batch).lower().compile()
    stats = compiled.memory_analysis()
    tokens = config.train.global_batch_size * config.train.seq_len
    plan = {
        "backend": jax.default_backend(),
        "tokens_per_step": tokens,
        "model_flops_per_step": metrics.flops_per_token(config)["model"] * tokens,
        "temporary_gib": stats.temp_size_in_bytes / aot.GIB,
        "compile_s": time.perf_counter() - start,
    }
    print(
        f"gpu dry run ({plan['backend']}): mini x {config.model.num_layers} layers, batch"
        f" {config.train.global_batch_size} x {config.train.seq_len}, remat"
        f" {config.model.remat}, {config.model.attention} attention: compiled in"
        f" {plan['compile_s']:.0f} s, {plan['temporary_gib']:.2f} GiB temporaries; a GPU run"
        f" times {steps} steps of {tokens} tokens and reports tokens/s and MFU ="
        f" {plan['model_flops_per_step']:.4g} model FLOPs per step x steps/s over the"
        " device's bf16 peak"
    )
    return plan


def measure(config) -> dict[str, float]:
    """Time the step on the first device: median of the timed steps."""
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
    device = jax.devices()[0]
    tokens_per_s = config.train.global_batch_size * config.train.seq_len / statistics.median(times)
    peak = device_peak(device)
    model_flops = metrics.flops_per_token(config)["model"] * tokens_per_s
    figures = {
        "device": device.device_kind,
        "tokens_per_s": tokens_per_s,
        "mfu": model_flops / peak if peak else None,
        "step_seconds": statistics.median(times),
    }
    mfu = f"MFU {100 * figures['mfu']:.1f}%" if peak else "MFU: peak of this device unknown"
    print(
        f"gpu: {device.device_kind}, mini x {config.model.num_layers} layers, batch"
        f" {config.train.global_batch_size} x {SEQ_LEN}, bf16, remat {config.model.remat},"
        f" {config.model.attention} attention: {tokens_per_s:,.0f} tokens/s, {mfu}"
    )
    return figures


def run() -> dict[str, dict] | None:
    """Per remat policy, the measurement on a GPU. None (nothing for results.json) without a
    GPU, and with --dry_run, which only prints its plans."""
    configs = {
        remat: gpu_config(_BATCH.value, _ATTENTION.value, _LAYERS.value, remat)
        for remat in _REMATS.value
    }
    if _DRY_RUN.value:
        for config in configs.values():
            dry_run(config, _STEPS.value)
        return None
    if jax.default_backend() != "gpu":
        print("gpu: skipped (no GPU; --dry_run compiles here)")
        return None
    return {remat: measure(config) for remat, config in configs.items()}


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
