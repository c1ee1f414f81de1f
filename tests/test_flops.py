"""Matmul FLOPs of a traced program: a scan's body counted once per trip (or once, without
`loop_trips`), and the FLOPs a count of each body once leaves out."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phi3_jax import flops


def test_jaxpr_flops_count_scan_trips():
    def f(x, w):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0] @ w

    x = jax.ShapeDtypeStruct((4, 8), jnp.float32)
    w = jax.ShapeDtypeStruct((8, 8), jnp.float32)
    jaxpr = jax.make_jaxpr(f)(x, w).jaxpr
    one = 2 * 4 * 8 * 8
    assert flops.jaxpr_matmul_flops(jaxpr) == 6 * one
    assert flops.jaxpr_matmul_flops(jaxpr, loop_trips=False) == 2 * one
    assert flops.uncounted_loop_flops(jaxpr) == 4 * one
