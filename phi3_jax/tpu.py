"""TPU slices by their Cloud TPU accelerator names (`v5e-256`, `v5p-128`): each generation's chip,
the slice's chip grid, its compile-only devices (libtpu from PyPI,
`jax.experimental.topologies.get_topology_desc`) and the config's mesh over them.

| generation | HBM / chip | peak bf16 / chip | the name counts | get_topology_desc |
|---|---|---|---|---|
| v4  | 32 GiB | 275 TFLOP/s | TensorCores, 2 per chip | `v4:XxYxZ`, megacore |
| v5e | 16 GiB | 197 TFLOP/s | chips | `v5e:XxY`, default |
| v5p | 95 GiB | 459 TFLOP/s | TensorCores, 2 per chip | `v5:XxYxZ`, megacore |
| v6e | 32 GiB | 918 TFLOP/s | chips | `v6e:XxY`, default |

(v4-128 is 64 chips, a 4x4x4 torus; v5e-256 is 16x16.) The peaks are `phi3_jax.metrics`'s table.
With `mesh.dcn_data` or `mesh.dcn_fsdp` above 1 the topology is that many slices (multi-slice).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import ml_collections
from jax.experimental import topologies

from phi3_jax import config as config_lib
from phi3_jax import sharding
from phi3_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation as the compiler sees it."""

    hbm_gib: float
    # Prefix of get_topology_desc's topology name.
    pjrt_name: str
    # TensorCores per chip: accelerator names of megacore generations count cores.
    cores_per_chip: int
    # Dimensions of the chip grid (2D torus or 3D torus).
    grid_dims: int

    @property
    def chip_config_name(self) -> str:
        return "megacore" if self.cores_per_chip == 2 else "default"


CHIPS = {
    "v4": Chip(hbm_gib=32, pjrt_name="v4", cores_per_chip=2, grid_dims=3),
    "v5e": Chip(hbm_gib=16, pjrt_name="v5e", cores_per_chip=1, grid_dims=2),
    "v5p": Chip(hbm_gib=95, pjrt_name="v5", cores_per_chip=2, grid_dims=3),
    "v6e": Chip(hbm_gib=32, pjrt_name="v6e", cores_per_chip=1, grid_dims=2),
}
# A 2D slice's full edge (v5e/v6e pods are 16x16); only full edges have wraparound links.
_FULL_2D_EDGE = 16


@dataclasses.dataclass(frozen=True)
class Topology:
    """A named TPU slice: its generation and chip grid."""

    name: str
    generation: str
    shape: tuple[int, ...]

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    def desc_kwargs(self, num_slices: int = 1) -> dict:
        """The arguments of `get_topology_desc` for this slice, `num_slices` times."""
        if self.chip.grid_dims == 3:
            # A 3D slice is a torus once every edge spans a full 4-chip cube.
            wrap = (all(edge >= 4 for edge in self.shape),) * 3
        else:
            wrap = (*(edge == _FULL_2D_EDGE for edge in self.shape), False)
        return dict(
            platform="tpu",
            topology_name=f"{self.chip.pjrt_name}:{'x'.join(map(str, self.shape))}",
            chip_config_name=self.chip.chip_config_name,
            chips_per_host_bounds=(2, 2, 1),
            num_slices=num_slices,
            wrap=wrap,
        )


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice's chip grid: 2x2(x1) doubled along its shortest, last edge (4 -> 2x2x1,
    8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4; 2D: 8 -> 2x4, 256 -> 16x16)."""
    shape = [2, 2] + [1] * (dims - 2)
    while math.prod(shape) < chips:
        shortest = min(shape)
        last = max(i for i, edge in enumerate(shape) if edge == shortest)
        shape[last] *= 2
    return tuple(shape)


def parse_topology(name: str) -> Topology:
    """`v5e-256` -> Topology; a ConfigError naming the problem otherwise."""
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    example = "e.g. v4-128, v5e-256, v5p-128, v6e-64"
    if not match:
        raise ConfigError(f"topology={name!r}: not of the form GENERATION-COUNT ({example})")
    generation, count = match.group(1), int(match.group(2))
    if generation not in CHIPS:
        raise ConfigError(
            f"topology={name!r}: unknown TPU generation {generation!r}; "
            f"expected one of {', '.join(CHIPS)} ({example})"
        )
    chip = CHIPS[generation]
    chips, cores_left = divmod(count, chip.cores_per_chip)
    unit = "TensorCores (2 per chip)" if chip.cores_per_chip == 2 else "chips"
    max_chips = _FULL_2D_EDGE**2 if chip.grid_dims == 2 else 4096
    if cores_left or chips < 4 or chips & (chips - 1) or chips > max_chips:
        raise ConfigError(
            f"topology={name!r}: {generation} names count {unit}; {count} is not a slice "
            f"(4 to {max_chips} chips, a power of two)"
        )
    return Topology(name=name, generation=generation, shape=_grid(chips, chip.grid_dims))


def num_slices(config: ml_collections.ConfigDict) -> int:
    """Slices of a multi-slice run: the mesh's cross-slice (DCN) factors."""
    return config.mesh.dcn_data * config.mesh.dcn_fsdp


def topology_devices(topology: Topology, slices: int = 1) -> list[jax.Device]:
    """Compile-only devices of `slices` copies of the slice."""
    # libtpu locks /tmp/libtpu_lockfile for the one process that may drive the host's TPUs; a
    # compiler drives none, so any number of planners (and test workers) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    return list(topologies.get_topology_desc(**topology.desc_kwargs(slices)).devices)


def topology_mesh(config: ml_collections.ConfigDict, topology: Topology) -> jax.sharding.Mesh:
    """The config's mesh over the topology's devices; a ConfigError with both counts if the mesh
    does not match the chips."""
    slices = num_slices(config)
    devices = topology_devices(topology, slices)
    where = f"{slices} slices of {topology.chips}" if slices > 1 else f"{topology.chips}"
    try:
        return sharding.make_mesh(config.mesh, devices)
    except ConfigError as e:
        raise ConfigError(f"topology {topology.name} has {where} chips: {e}") from None
    except NotImplementedError:
        # jax lays each mesh axis along whole torus edges (mesh_utils.create_device_mesh).
        shape = "x".join(map(str, topology.shape))
        mesh = {axis: config.mesh[axis] for axis in config_lib.MESH_AXES}
        raise ConfigError(
            f"mesh={mesh}: topology {topology.name} is a {shape} torus of chips; every mesh "
            "axis must be a product of its edges"
        ) from None
