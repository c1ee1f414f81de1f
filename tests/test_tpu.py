"""TPU slice names: each maps to get_topology_desc's arguments and compile-only devices; unknown
names and meshes that do not match the chips (or cross torus edges) are named in one line."""

from __future__ import annotations

import pytest

from configs import phi3_tiny
from phi3_jax import tpu
from phi3_jax.config import ConfigError


@pytest.mark.parametrize(
    "name, chips, topology_name, chip_config, wrap",
    [
        ("v4-8", 4, "v4:2x2x1", "megacore", (False, False, False)),
        ("v4-128", 64, "v4:4x4x4", "megacore", (True, True, True)),
        ("v5p-64", 32, "v5:2x4x4", "megacore", (False, False, False)),
        ("v5p-128", 64, "v5:4x4x4", "megacore", (True, True, True)),
        ("v5e-8", 8, "v5e:2x4", "default", (False, False, False)),
        ("v5e-128", 128, "v5e:8x16", "default", (False, True, False)),
        ("v5e-256", 256, "v5e:16x16", "default", (True, True, False)),
        ("v6e-256", 256, "v6e:16x16", "default", (True, True, False)),
    ],
)
def test_topology_names_map_to_get_topology_desc(name, chips, topology_name, chip_config, wrap):
    topology = tpu.parse_topology(name)
    kwargs = topology.desc_kwargs()
    assert topology.chips == chips
    assert kwargs["topology_name"] == topology_name
    assert kwargs["chip_config_name"] == chip_config
    assert kwargs["wrap"] == wrap


def test_compile_only_devices_match_the_table():
    devices = tpu.topology_devices(tpu.parse_topology("v5p-16"))
    assert len(devices) == 8
    assert devices[0].platform == "tpu" and devices[0].device_kind == "TPU v5"
    assert len(tpu.topology_devices(tpu.parse_topology("v5e-4"), slices=2)) == 8


@pytest.mark.parametrize(
    "name, message",
    [
        ("v7-8", "unknown TPU generation 'v7'; expected one of v4, v5e, v5p, v6e"),
        ("v5p-7", "v5p names count TensorCores (2 per chip); 7 is not a slice"),
        ("v5e-512", "v5e names count chips; 512 is not a slice (4 to 256 chips"),
        ("tpu", "not of the form GENERATION-COUNT"),
    ],
)
def test_unknown_topologies_are_named(name, message):
    with pytest.raises(ConfigError, match="topology=") as error:
        tpu.parse_topology(name)
    assert message in str(error.value)


def test_a_mesh_not_matching_the_chips_names_both_counts():
    config = phi3_tiny.get_config()
    config.mesh.update(data=1, fsdp=8, tensor=1)
    with pytest.raises(ConfigError) as error:
        tpu.topology_mesh(config, tpu.parse_topology("v5e-256"))
    message = str(error.value)
    assert message.startswith("topology v5e-256 has 256 chips: mesh={'data': 1, 'fsdp': 8, ")
    assert message.endswith(" = 8 but there are 256 devices")


def test_a_mesh_axis_across_torus_edges_is_named():
    config = phi3_tiny.get_config()
    config.mesh.update(data=1, fsdp=32, tensor=2)
    with pytest.raises(ConfigError) as error:
        tpu.topology_mesh(config, tpu.parse_topology("v5p-128"))
    message = str(error.value)
    assert message.startswith("mesh={'data': 1, 'fsdp': 32, ")
    assert message.endswith(
        ": topology v5p-128 is a 4x4x4 torus of chips; every mesh axis must be a product of its "
        "edges"
    )
