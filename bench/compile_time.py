"""Time to the first train step on this CPU, for the tiny config and the 134M benchmark model:
state initialisation, then lowering + XLA compilation, then the first step's execution.

    python -m bench.compile_time
"""

from __future__ import annotations

import time

import jax
from absl import app

from bench import cpu_train
from configs import phi3_tiny
from phi3_jax import sharding, train

RESULT_KEY = "compile_s"


def first_step_seconds(config) -> dict[str, float]:
    """Seconds of init, compile (lower + compile) and the first step, and their total."""
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    start = time.perf_counter()
    state = jax.block_until_ready(train.init_state(config, mesh))
    initialised = time.perf_counter()
    batch = cpu_train.device_batch(config, mesh)
    compiled = train.make_train_step(config, mesh).lower(state, batch).compile()
    lowered = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    done = time.perf_counter()
    return {
        "init_s": initialised - start,
        "compile_s": lowered - initialised,
        "first_step_s": done - lowered,
        "total_s": done - start,
    }


def run() -> dict[str, dict[str, float]]:
    """Both configs' timings, printed and returned."""
    tiny = phi3_tiny.get_config()
    tiny.mesh.update(data=1, fsdp=1, sequence=1, tensor=1)
    tiny.train.update(global_batch_size=cpu_train.BATCH, seq_len=128)
    figures = {
        "tiny": first_step_seconds(tiny),
        "134m": first_step_seconds(cpu_train.config_134m()),
    }
    for name, f in figures.items():
        print(
            f"compile_s {name}: init {f['init_s']:.1f} s, compile {f['compile_s']:.1f} s,"
            f" first step {f['first_step_s']:.1f} s; total {f['total_s']:.1f} s"
        )
    return figures


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
