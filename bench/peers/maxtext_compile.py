"""MaxText's own AOT compile (`maxtext.trainers.pre_train.train_compile`), counted as
`phi3_jax.aot` counts ours. Runs in MaxText's virtualenv (`bench.maxtext_peer` starts it there,
the repository root on PYTHONPATH); outside the bench package (no `__init__.py` here), so
`python -m bench`, which imports every module of it, never imports maxtext.

    python bench/peers/maxtext_compile.py compile_topology=v5e-256 ...   # MaxText's key=value args

train_compile prints XLA's cost analysis, which counts a scanned layer once; the wrapper around
its `jit_and_compile` adds the loop iterations XLA leaves out (`phi3_jax.flops.compiled_flops`,
as `phi3_jax.aot` does) and prints one line `RESULT_PREFIX {json}`: per-chip bytes and FLOPs.
"""

from __future__ import annotations

import json

import jax
from absl import app
from flax.core.spmd import logical_axis_rules
from maxtext.trainers.pre_train import train_compile

from phi3_jax import flops

RESULT_PREFIX = "phi3_jax.maxtext_compile:"
_compile = train_compile.jit_and_compile


def _counted(func, args, kwargs, mesh, in_shardings, out_shardings, static, donate, config, rules):
    """train_compile.jit_and_compile, then the figures of what it compiled."""
    compiled = _compile(
        func, args, kwargs, mesh, in_shardings, out_shardings, static, donate, config, rules
    )
    # `rules` is a one-shot context manager, spent by the compile: the trace makes its own.
    with jax.set_mesh(mesh), logical_axis_rules(config.logical_axis_rules):
        traced = jax.jit(
            func,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            static_argnums=static,
            donate_argnums=donate,
        ).trace(*args, **kwargs)
    stats = compiled.memory_analysis()
    figures = {
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "temporary_bytes": stats.temp_size_in_bytes,
        "aliased_bytes": stats.alias_size_in_bytes,
        "xla_flops": compiled.cost_analysis()["flops"],
        "compiled_flops": flops.compiled_flops(traced, compiled, mesh.size),
        "devices": mesh.size,
    }
    print(RESULT_PREFIX, json.dumps(figures), flush=True)
    return compiled


if __name__ == "__main__":
    train_compile.jit_and_compile = _counted
    app.run(train_compile.main)
