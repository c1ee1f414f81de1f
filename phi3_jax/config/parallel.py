"""The `mesh` and `sharding` sections: device mesh axes and the logical axis rules onto them."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail, is_int, require_positive_int

MESH_AXES = ("data", "fsdp", "sequence", "tensor")


def default_mesh_config() -> ml_collections.ConfigDict:
    """Device mesh axes (data, fsdp, sequence, tensor); the device count is their product."""
    m = ml_collections.ConfigDict()
    # Pure data parallelism within a slice: replicas of the (fsdp, tensor) sharded model; -1 = rest.
    m.data = 1
    # Fully sharded data parallelism within a slice: batch and the params' embed dim; -1 = rest.
    m.fsdp = -1
    # Sequence (context) parallelism: activations split along the sequence (rule length ->
    # sequence); attention gathers keys/values over it. For long context (mini-128k).
    m.sequence = 1
    # Tensor parallelism: heads, kv heads, mlp and vocab split over it; -1 = all remaining devices.
    m.tensor = 1
    # Cross-slice (DCN) factor of the data axis for multi-slice TPU; total data = dcn_data * data.
    m.dcn_data = 1
    # Cross-slice (DCN) factor of the fsdp axis; total fsdp = dcn_fsdp * fsdp.
    m.dcn_fsdp = 1
    return m


def default_sharding_config() -> ml_collections.ConfigDict:
    """Logical axis rules: the model's logical axis names mapped onto mesh axes."""
    s = ml_collections.ConfigDict()
    # (logical name, mesh axis | tuple of mesh axes | None) pairs, first free match wins (flax
    # semantics). Every logical name a parameter uses must appear; None replicates explicitly.
    s.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("length", "sequence"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("mlp", "tensor"),
        ("layers", None),
    )
    return s


def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid mesh key (device counts are checked later)."""
    for axis in MESH_AXES:
        value = mesh[axis]
        if not is_int(value) or not (value > 0 or value == -1):
            fail(f"mesh.{axis}", value, "must be a positive integer or -1 (remaining devices)")
    if sum(mesh[axis] == -1 for axis in MESH_AXES) > 1:
        fail("mesh", {a: mesh[a] for a in MESH_AXES}, "at most one axis may be -1")
    for key in ("dcn_data", "dcn_fsdp"):
        require_positive_int(f"mesh.{key}", mesh[key])


def rule_mesh_axes(mesh_axes) -> tuple[str, ...]:
    """A rule's mesh axes as a tuple: None -> (), "fsdp" -> ("fsdp",), lists -> tuples."""
    if mesh_axes is None:
        return ()
    if isinstance(mesh_axes, str):
        return (mesh_axes,)
    return tuple(mesh_axes)


def validate_sharding(sharding: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first malformed logical axis rule."""
    key = "sharding.logical_axis_rules"
    for rule in sharding.logical_axis_rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            fail(key, rule, "each rule must be a (logical name, mesh axes) pair")
        axes = rule_mesh_axes(rule[1])
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            fail(key, rule, f"unknown mesh axis {unknown[0]!r}; mesh axes are {MESH_AXES}")
        if len(set(axes)) != len(axes):
            fail(key, rule, "a mesh axis appears twice in one rule")
