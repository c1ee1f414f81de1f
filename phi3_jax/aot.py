"""`python -m phi3_jax.aot --config=configs/phi3_mini.py --topology=v5e-256 [--search]`: compile
the real train step for a TPU slice from a CPU host; report memory per chip, whether it fits,
compiled against analytic FLOPs, and an estimated step time and MFU.

libtpu (PyPI) provides compile-only TPU devices (`jax.experimental.topologies.get_topology_desc`);
the state and the batch are ShapeDtypeStructs carrying their shardings, so nothing is allocated.
The fit is counted here, arguments + temporaries + outputs - aliased (donated) bytes against the
chip's HBM: the compiler checks only its temporaries, so a step whose parameters and optimizer
state alone overflow the chip compiles without complaint.

Topologies are named as Cloud TPU accelerator types:

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
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from ml_collections import config_flags

from phi3_jax import config as config_lib
from phi3_jax import flops, metrics, sharding, train
from phi3_jax.config import ConfigError

GIB = 1024**3


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


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip of one compiled step."""

    argument: int
    output: int
    temporary: int
    aliased: int

    @property
    def total(self) -> int:
        return self.argument + self.output + self.temporary - self.aliased


def per_chip_bytes(tree) -> int:
    """Bytes on one chip of a pytree of sharded ShapeDtypeStructs (every shard is equal)."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def abstract_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
    """The global batch as ShapeDtypeStructs with their shardings."""
    shape = (config.train.global_batch_size, config.train.seq_len)
    return {
        key: jax.ShapeDtypeStruct(shape, np.int32, sharding=s)
        for key, s in train.batch_shardings(config, mesh).items()
    }


# The compiler's out-of-memory message names the temporaries it could not place, e.g.
# "the total memory required for HLO temporaries (16.54G) exceeds available HBM (15.75G)".
_OOM_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)")


def oom_temporary_bytes(message: str) -> int | None:
    """The temporaries of a compiler out-of-memory message, in bytes (None if not stated)."""
    match = _OOM_TEMPORARIES.search(message)
    if not match:
        return None
    scale = 1024 ** " KMGT".index(match.group(2) or " ")
    return int(float(match.group(1)) * scale)


@dataclasses.dataclass(frozen=True)
class Report:
    """What one compile of a config for a topology tells."""

    topology: Topology
    mesh: dict[str, int]
    memory: Memory
    hbm_bytes: int
    # Per chip per step; compiled is None when the compiler ran out of memory.
    compiled_flops: float | None
    analytic_flops: float
    model_flops: float
    peak_flops: float
    compile_seconds: float
    compiler_error: str | None = None

    @property
    def fits(self) -> bool:
        return self.compiler_error is None and self.memory.total <= self.hbm_bytes

    @property
    def step_seconds(self) -> float | None:
        """Compute-bound estimate: the compiled FLOPs at the chip's peak (no communication or
        memory stalls), so a lower bound on the step time."""
        return None if self.compiled_flops is None else self.compiled_flops / self.peak_flops

    @property
    def mfu(self) -> float | None:
        """Model FLOPs over peak FLOPs in the estimated step time: an upper bound."""
        step = self.step_seconds
        return None if step is None else self.model_flops / (self.peak_flops * step)


def _peak_flops(device: jax.Device) -> float:
    return next(peak for kind, peak in metrics.PEAK_FLOPS if kind in device.device_kind)


def plan(config: ml_collections.ConfigDict, topology: Topology) -> Report:
    """Compile config's train step for the topology and measure it."""
    config = config_lib.freeze(config)
    mesh = topology_mesh(config, topology)
    state = train.abstract_state(config, mesh)
    batch = abstract_batch(config, mesh)
    traced = train.make_train_step(config, mesh).trace(state, batch)
    start = time.perf_counter()
    error = None
    try:
        compiled = traced.lower().compile()
        stats = compiled.memory_analysis()
        memory = Memory(
            argument=stats.argument_size_in_bytes,
            output=stats.output_size_in_bytes,
            temporary=stats.temp_size_in_bytes,
            aliased=stats.alias_size_in_bytes,
        )
        compiled_flops = flops.compiled_flops(traced, compiled, mesh.size)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        error = str(e).splitlines()[0]
        # Counted from the shardings: the new state replaces the donated one; the metrics are a
        # few scalars.
        state_bytes = per_chip_bytes(state)
        memory = Memory(
            argument=state_bytes + per_chip_bytes(batch),
            output=state_bytes,
            temporary=oom_temporary_bytes(error) or 0,
            aliased=state_bytes,
        )
        compiled_flops = None
    per_token = metrics.flops_per_token(config)
    tokens_per_chip = config.train.global_batch_size * config.train.seq_len / mesh.size
    return Report(
        topology=topology,
        mesh=dict(mesh.shape),
        memory=memory,
        hbm_bytes=int(topology.chip.hbm_gib * GIB),
        compiled_flops=compiled_flops,
        analytic_flops=(per_token["model"] + per_token["remat"]) * tokens_per_chip,
        model_flops=per_token["model"] * tokens_per_chip,
        peak_flops=_peak_flops(mesh.devices.flat[0]),
        compile_seconds=time.perf_counter() - start,
        compiler_error=error,
    )


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_report(config: ml_collections.ConfigDict, report: Report) -> str:
    """The report as printed by the CLI."""
    t, m = report.topology, report.memory
    kwargs = t.desc_kwargs()
    slices = num_slices(config)
    lines = [
        f"topology: {t.name} = {kwargs['topology_name']} ({t.chips} chips"
        + (f" x {slices} slices" if slices > 1 else "")
        + f"), {t.chip.hbm_gib} GiB HBM and {report.peak_flops / 1e12:.0f} TFLOP/s bf16 per chip",
        f"config: {config.model.name} | mesh {report.mesh} | remat {config.model.remat} | "
        f"batch {config.train.global_batch_size} x {config.train.seq_len} in "
        f"{config.train.microbatches} microbatch(es)",
        "memory per chip:",
        f"  arguments    {_gib(m.argument)}  (params, optimizer state, batch)",
        f"  outputs      {_gib(m.output)}",
        f"  temporaries  {_gib(m.temporary)}",
        f"  aliased     -{_gib(m.aliased)}  (donated state reused for the new state)",
        f"  total        {_gib(m.total)}  of {_gib(report.hbm_bytes)} HBM "
        f"({100 * m.total / report.hbm_bytes:.0f}%)",
    ]
    if report.compiler_error:
        lines.append(f"  compiler: {report.compiler_error}")
    if report.fits:
        lines.append("fits: yes")
    else:
        over = m.total - report.hbm_bytes
        lines.append(
            f"fits: no (needs {_gib(m.total)} per chip, the chip has {_gib(report.hbm_bytes)}"
            + (f", {_gib(over)} over" if over > 0 else "")
            + "; more fsdp, remat or microbatches may fit: try --search)"
        )
    lines.append(
        f"analytic FLOPs per chip per step: {report.analytic_flops:.4g} "
        f"(model {report.model_flops:.4g} + remat recompute)"
    )
    if report.compiled_flops is not None:
        lines += [
            f"compiled FLOPs per chip per step: {report.compiled_flops:.4g} "
            f"({report.compiled_flops / report.analytic_flops:.3f} x analytic)",
            f"estimated step time: {report.step_seconds:.3f} s (compiled FLOPs at peak)",
            f"estimated MFU: {100 * report.mfu:.1f}% (upper bound: no communication stalls)",
        ]
    lines.append(f"compile time: {report.compile_seconds:.0f} s")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One point of the search space."""

    tensor: int
    remat: str
    microbatches: int


def candidate_config(
    config: ml_collections.ConfigDict, candidate: Candidate
) -> ml_collections.FrozenConfigDict:
    """The config with the candidate's mesh (fsdp takes the devices tensor does not), remat and
    microbatching, validated and frozen."""
    return config_lib.replace(
        config,
        mesh=dict(data=1, fsdp=-1, tensor=candidate.tensor),
        model=dict(remat=candidate.remat),
        train=dict(microbatches=candidate.microbatches),
    )


def search(
    config: ml_collections.ConfigDict,
    topology: Topology,
    tensors: list[int],
    remats: list[str],
    microbatches: list[int],
    log: Callable[[str], None] = print,
) -> list[tuple[Candidate, Report]]:
    """The candidates that fit, fastest estimated step first (then least memory).

    For each mesh and remat policy, microbatch counts are tried in increasing order up to the
    first that fits (more only add sequential steps). A mesh whose parameters and optimizer state
    alone overflow the chip is skipped without compiling.
    """
    found = []
    for tensor in tensors:
        try:
            first = candidate_config(config, Candidate(tensor, remats[0], microbatches[0]))
            mesh = topology_mesh(first, topology)
            state_bytes = per_chip_bytes(train.abstract_state(first, mesh))
        except ConfigError as e:
            log(f"skip tensor={tensor}: {e}")
            continue
        hbm = topology.chip.hbm_gib * GIB
        if state_bytes > hbm:
            log(f"skip tensor={tensor}: the state alone takes {_gib(state_bytes)} per chip")
            continue
        for remat in remats:
            for count in sorted(microbatches):
                candidate = Candidate(tensor, remat, count)
                try:
                    report = plan(candidate_config(config, candidate), topology)
                except ConfigError as e:
                    log(f"skip {candidate}: {e}")
                    continue
                log(
                    f"{candidate}: {_gib(report.memory.total)}, fits: "
                    f"{'yes' if report.fits else 'no'} ({report.compile_seconds:.0f} s)"
                )
                if report.fits:
                    found.append((candidate, report))
                    break
    return sorted(found, key=lambda cr: (cr[1].step_seconds, cr[1].memory.total))


def format_search(found: list[tuple[Candidate, Report]]) -> str:
    """The table of fitting candidates, as found (best first)."""
    lines = [
        f"| mesh ({', '.join(config_lib.MESH_AXES)}) | remat | microbatches | GiB per chip | "
        "step s | MFU |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for candidate, report in found:
        mesh = ", ".join(str(report.mesh[a]) for a in config_lib.MESH_AXES)
        lines.append(
            f"| ({mesh}) | {candidate.remat} | {candidate.microbatches} | "
            f"{report.memory.total / GIB:.2f} | {report.step_seconds:.3f} | "
            f"{100 * report.mfu:.1f}% |"
        )
    return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "A TPU slice, e.g. v5e-256, v4-128, v5p-128.")
_SEARCH = flags.DEFINE_bool("search", False, "Try mesh/remat/microbatch combinations.")
_TENSORS = flags.DEFINE_list("search_tensor", ["1", "2", "4"], "Tensor-parallel sizes to try.")
_REMATS = flags.DEFINE_list(
    "search_remat", ["none", "dots_no_batch", "full"], "Remat policies to try."
)
_MICROBATCHES = flags.DEFINE_list("search_microbatches", ["1", "2", "4", "8"], "To try.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # libtpu is only the compiler here: the host's own devices are CPUs.
    jax.config.update("jax_platforms", "cpu")
    try:
        # Validated once, the command line's overrides in; frozen from here on.
        config = config_lib.freeze(_CONFIG.value)
        topology = parse_topology(_TOPOLOGY.value)
        if _SEARCH.value:
            found = search(
                config,
                topology,
                [int(t) for t in _TENSORS.value],
                _REMATS.value,
                [int(m) for m in _MICROBATCHES.value],
            )
            if not found:
                sys.exit(f"error: nothing fits {topology.name}")
            print(format_search(found))
            return
        report = plan(config, topology)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(format_report(config, report))
    if not report.fits:
        sys.exit(1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
