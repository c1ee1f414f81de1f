"""XLA CPU flags worth setting, measured: for each candidate `XLA_FLAGS`, a fresh process measures
the JAX matmul probe and the train-step throughput of the cpu_train model at reduced depth
(`--flags_layers`, default 2 of 12; same width, batch and vocabulary). Ratios are against no
flags, measured in the same run.

    python -m bench.xla_flags [--flags_layers=2] [--flags_steps=3]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
from absl import app, flags

from bench import cpu_train
from phi3_jax import metrics

CANDIDATES = {
    "none": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}

_LAYERS = flags.DEFINE_integer("flags_layers", 2, "layers of the measured model")
_STEPS = flags.DEFINE_integer("flags_steps", 3, "timed steps per flag set")
_WORKER = flags.DEFINE_bool("flags_worker", False, "internal: measure once under XLA_FLAGS")


def measure() -> dict[str, float]:
    """This process's matmul probe and tokens/s (after one compile step)."""
    config = cpu_train.config_134m(num_layers=_LAYERS.value)
    trainer = cpu_train.JaxTrainer(config)
    trainer.steps(1)
    start = time.perf_counter()
    trainer.steps(_STEPS.value)
    seconds = (time.perf_counter() - start) / _STEPS.value
    return {
        "matmul_gflops_per_s": metrics.cpu_matmul_flops() / 1e9,
        "tokens_per_s": cpu_train.BATCH * cpu_train.SEQ_LEN / seconds,
    }


def run() -> dict[str, dict[str, float]]:
    """Each candidate in its own process; printed and returned with ratios to no flags."""
    figures = {}
    for name, xla_flags in CANDIDATES.items():
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
        argv = [sys.executable, "-m", "bench.xla_flags", "--flags_worker"]
        argv += [f"--flags_layers={_LAYERS.value}", f"--flags_steps={_STEPS.value}"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode:
            figures[name] = {"error": done.stderr.strip().splitlines()[-1]}
            print(f"xla_flags {name} ({xla_flags}): failed: {figures[name]['error']}")
            continue
        figures[name] = json.loads(done.stdout.strip().splitlines()[-1])
    base = figures["none"]
    for name, row in figures.items():
        if "error" in row:
            continue
        row["tokens_ratio"] = row["tokens_per_s"] / base["tokens_per_s"]
        print(
            f"xla_flags {name} ({CANDIDATES[name] or 'no flags'}): matmul"
            f" {row['matmul_gflops_per_s']:.0f} GFLOP/s, {row['tokens_per_s']:.0f} tokens/s"
            f" ({row['tokens_ratio']:.2f}x), {_LAYERS.value} layers"
        )
    return figures


def main(argv: list[str]) -> None:
    del argv
    if _WORKER.value:
        assert jax.default_backend() == "cpu"
        print(json.dumps(measure()))
    else:
        run()


if __name__ == "__main__":
    app.run(main)
