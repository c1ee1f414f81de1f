"""Checksums of a checkpoint's arrays: equal values give equal sums on any sharding, one changed
bit or a swap of two elements changes them, every dtype a state holds is summed, the non-finite
arrays are named, and the check names the array that does not match."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi3_jax.checkpoint.checksums import DamagedError, array_checksums, verify_checksums

TREE = {
    "w": jnp.arange(32, dtype=jnp.float32).reshape(8, 4) / 7,
    "step": jnp.asarray(3, jnp.int32),
    "half": jnp.ones(5, jnp.bfloat16),
    "mask": jnp.asarray([True, False]),
    "rng": jax.random.key(0),
}


def test_equal_values_on_any_sharding_give_equal_sums():
    sums, non_finite = array_checksums(TREE)
    assert sorted(sums) == ["['half']", "['mask']", "['rng']", "['step']", "['w']"]
    assert all(len(v) == 2 for v in sums.values()) and non_finite == []
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("rows",))
    assert mesh.size > 1  # the test session's emulated CPU devices
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
    placed = dict(TREE, w=jax.device_put(TREE["w"], spec))
    assert array_checksums(placed)[0] == sums


def test_a_changed_bit_or_swapped_elements_change_the_sums():
    sums = array_checksums(TREE)[0]["['w']"]
    w = np.asarray(TREE["w"])
    flipped = w.view(np.uint32).copy()
    flipped[3, 1] ^= 1
    swapped = w.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    for changed in (flipped.view(np.float32), swapped):
        assert array_checksums({"w": jnp.asarray(changed)})[0]["['w']"] != sums


def test_non_finite_arrays_are_named_and_the_check_names_the_array():
    _, non_finite = array_checksums({"a": jnp.ones(2), "b": jnp.asarray([1.0, jnp.nan])})
    assert non_finite == ["['b']"]
    saved = array_checksums(TREE)[0]
    verify_checksums(TREE, saved, "ckpt/3")
    damaged = dict(TREE, step=jnp.asarray(4, jnp.int32))
    with pytest.raises(DamagedError, match=r"^ckpt/3: array \['step'\] does not match its saved"):
        verify_checksums(damaged, saved, "ckpt/3")
