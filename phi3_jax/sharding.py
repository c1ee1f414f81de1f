"""The device mesh and the logical axis rules that place every array on it.

The model names its axes logically (`embed`, `heads`, `batch`, ...); the config's rules map those
names onto the mesh axes `data`, `fsdp`, `sequence` and `tensor`. Shardings are derived from
shapes and logical names alone, so nothing full-size is built to learn them, and a parameter whose
logical names no rule covers is an error naming it: nothing is silently replicated.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phi3_jax.config import MESH_AXES, ConfigError, rule_mesh_axes

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical names of a [batch, length] input array (tokens, targets, masks).
BATCH_AXES = ("batch", "length")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Total size of each mesh axis (DCN factor times in-slice size), with -1 resolved."""
    dcn = _dcn_factors(mesh_config)
    num_slices = math.prod(dcn.values())
    if num_devices % num_slices:
        raise ConfigError(
            f"mesh.dcn_data * mesh.dcn_fsdp={num_slices}: must divide the device count {num_devices}"
        )
    per_slice = num_devices // num_slices
    ici = {axis: mesh_config[axis] for axis in MESH_AXES}
    fixed = math.prod(size for size in ici.values() if size != -1)
    for axis, size in ici.items():
        if size == -1:
            if per_slice % fixed:
                raise ConfigError(
                    f"mesh.{axis}=-1: the other axes ({fixed}) do not divide {per_slice}"
                )
            ici[axis] = per_slice // fixed
    if math.prod(ici.values()) != per_slice:
        raise ConfigError(
            f"mesh={ici}: data*fsdp*tensor = {math.prod(ici.values())} but there are "
            f"{per_slice} devices" + (f" per slice ({num_slices} slices)" if num_slices > 1 else "")
        )
    return {axis: dcn[axis] * ici[axis] for axis in MESH_AXES}


def _dcn_factors(mesh_config: ml_collections.ConfigDict) -> dict[str, int]:
    """Cross-slice factor of each mesh axis (only data and fsdp span slices)."""
    factors = dict.fromkeys(MESH_AXES, 1)
    factors.update(data=mesh_config.dcn_data, fsdp=mesh_config.dcn_fsdp)
    return factors


def make_mesh(
    mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """The (data, fsdp, sequence, tensor) mesh over `devices` (default: all), axes of Auto type.

    Auto axes let GSPMD propagate shardings from linen's logical constraints. With a DCN split,
    the outer factor of data/fsdp spans slices (processes when there is a single slice).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    dcn_shape = tuple(_dcn_factors(mesh_config).values())
    if math.prod(dcn_shape) == 1:
        return jax.make_mesh(
            tuple(shape.values()), MESH_AXES, axis_types=axis_types, devices=devices
        )
    ici_shape = [shape[axis] // dcn for axis, dcn in zip(MESH_AXES, dcn_shape, strict=True)]
    # Slices are the DCN granules on multi-slice TPU; elsewhere (one slice, CPU, GPU) processes.
    slices = {getattr(device, "slice_index", 0) for device in devices}
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices, process_is_granule=len(slices) == 1
    )
    return Mesh(device_array, MESH_AXES, axis_types=axis_types)


def logical_rules(config: ml_collections.ConfigDict) -> Rules:
    """The config's logical axis rules as hashable tuples (JSON round trips give lists)."""

    def hashable(axes):
        return axes if axes is None or isinstance(axes, str) else rule_mesh_axes(axes)

    return tuple((name, hashable(axes)) for name, axes in config.sharding.logical_axis_rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes linen's logical constraints bind: the mesh (abstractly, so it works inside jit)
    and the rules. Enter it inside a traced function."""
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        yield


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def _check_covered(path: str, logical: PartitionSpec, rules: Rules) -> None:
    named = {name for name, _ in rules}
    for name in logical:
        if name is not None and name not in named:
            raise ConfigError(
                f"sharding.logical_axis_rules: no rule for logical axis {name!r} of {path} "
                f"{tuple(logical)}; add ({name!r}, <mesh axes or None>)"
            )


def _check_divisible(path: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> None:
    for dim, axes in zip(shape, spec, strict=False):
        size = math.prod(mesh.shape[a] for a in rule_mesh_axes(axes))
        if dim % size:
            raise ConfigError(
                f"mesh={dict(mesh.shape)}: {path} dim {dim} does not divide over mesh axes "
                f"{axes} of size {size} (shape {shape}, spec {spec})"
            )


def shardings(abstract_tree, logical_tree, mesh: Mesh, rules: Rules):
    """NamedShardings for a pytree of arrays from its logical PartitionSpecs.

    Raises ConfigError naming the leaf if a logical name has no rule or a sharded dimension does
    not divide over its mesh axes (both before anything compiles).
    """
    paths_and_specs, treedef = jax.tree_util.tree_flatten_with_path(logical_tree, is_leaf=_is_spec)
    abstract_leaves = treedef.flatten_up_to(abstract_tree)
    out = []
    for (path, logical), leaf in zip(paths_and_specs, abstract_leaves, strict=True):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        _check_covered(name, logical, rules)
        spec = nn.logical_to_mesh_axes(logical, rules)
        _check_divisible(name, leaf.shape, spec, mesh)
        out.append(NamedSharding(mesh, spec))
    return treedef.unflatten(out)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a [batch, length] input array."""
    _check_covered("the batch", PartitionSpec(*BATCH_AXES), rules)
    return NamedSharding(mesh, nn.logical_to_mesh_axes(BATCH_AXES, rules))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split (the product of its mesh axes)."""
    axes = batch_sharding(mesh, rules).spec[0]
    return math.prod(mesh.shape[a] for a in rule_mesh_axes(axes))


def process_rows(sharding: NamedSharding, global_batch_size: int) -> np.ndarray:
    """The global batch rows this process feeds, ascending (replicas across processes repeat).

    A process feeds whole rows; with sequence parallelism its devices take their parts of them.
    """
    rows_only = NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0]))
    index_map = rows_only.addressable_devices_indices_map((global_batch_size,))
    rows = {r for index in index_map.values() for r in range(global_batch_size)[index[0]]}
    return np.array(sorted(rows))


def global_batch(
    local_batch: dict[str, np.ndarray], sharding: NamedSharding, global_batch_size: int
) -> dict[str, jax.Array]:
    """Global arrays from this process's rows (see `process_rows`), each process feeding its part."""
    return {
        key: jax.make_array_from_process_local_data(
            sharding, value, (global_batch_size, *value.shape[1:])
        )
        for key, value in local_batch.items()
    }
