"""Matmul FLOPs of a traced program, loops counted by their trip counts.

XLA's cost analysis of a compiled program counts a while-loop body once, whatever its trip count,
so a step whose layers run under `nn.scan` (and whose microbatches run under `lax.scan`) reports
a fraction of its work. Counting the dot_generals of the step's jaxpr both ways, with every scan
iteration and with each body once, gives the FLOPs XLA left out. (The analytic count from the
config is `phi3_jax.metrics.flops_per_token`.)

Two kinds of call hide work from that count. A Pallas kernel (splash attention) is a custom call
whose dots XLA does not see: it counts grid x its body's dots here (every grid step's, those the
kernel skips for masked blocks included, so an upper bound), none as XLA counts. A `shard_map`
body is one device's program: it counts times the devices it is mapped over, so that, as for the
rest of the jaxpr, the total is the whole mesh's.
"""

from __future__ import annotations

import math

import jax.extend as jex


def _dot_flops(eqn) -> int:
    lhs = eqn.invars[0].aval.shape
    (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
    contracted = math.prod(lhs[d] for d in lhs_contracting)
    return 2 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _repeats(eqn, loop_trips: bool) -> int:
    """How many times a call's body counts: scan trips and Pallas grid steps (both 0 or 1 as
    XLA counts, loop_trips=False), shard_map's devices."""
    name = eqn.primitive.name
    if name == "scan":
        return eqn.params["length"] if loop_trips else 1
    if name == "pallas_call":
        return math.prod(eqn.params["grid_mapping"].grid) if loop_trips else 0
    if name == "shard_map":
        mesh = eqn.params["mesh"]
        return math.prod(mesh.shape[axis] for axis in eqn.params["newly_manual_axes"])
    return 1


def jaxpr_matmul_flops(jaxpr: jex.core.Jaxpr, *, loop_trips: bool = True) -> int:
    """dot_general FLOPs of a jaxpr over the whole mesh, nested calls included; a scan's body
    counts `length` times and a Pallas kernel's grid-size times (with loop_trips=False as XLA's
    cost analysis counts them: a loop once, a kernel not at all). Conditionals count their
    costliest branch."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            total += _dot_flops(eqn)
            continue
        inner = [
            jaxpr_matmul_flops(sub, loop_trips=loop_trips)
            for sub in jex.core.jaxprs_in_params(eqn.params)
        ]
        if not inner:
            continue
        if eqn.primitive.name == "cond":
            total += max(inner)
        else:
            total += _repeats(eqn, loop_trips) * sum(inner)
    return total


def uncounted_loop_flops(jaxpr: jex.core.Jaxpr) -> int:
    """The matmul FLOPs of the scan iterations after each loop's first and of Pallas kernels:
    what XLA's cost analysis of the compiled program leaves out."""
    return jaxpr_matmul_flops(jaxpr) - jaxpr_matmul_flops(jaxpr, loop_trips=False)


def compiled_flops(traced, compiled, devices: int) -> float:
    """FLOPs per device of a compiled program (`jax.jit(...).trace(...)` and its `.lower().
    compile()`): XLA's cost analysis plus the loop iterations it leaves out, split evenly over
    the `devices`."""
    return compiled.cost_analysis()["flops"] + uncounted_loop_flops(traced.jaxpr.jaxpr) / devices
