"""`python -m phi3_jax.aot --config=configs/phi3_mini.py --topology=v5e-256 [--search]`: compile
the real train step for a TPU slice from a CPU host; report memory per chip, whether it fits,
compiled against analytic FLOPs, and an estimated step time and MFU.

The slice's compile-only devices come from `phi3_jax.tpu` (its names and chips); the state and
the batch are ShapeDtypeStructs carrying their shardings, so nothing is allocated. The fit is
counted here, arguments + temporaries + outputs - aliased (donated) bytes against the chip's HBM:
the compiler checks only its temporaries, so a step whose parameters and optimizer state alone
overflow the chip compiles without complaint.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from phi3_jax import config as config_lib
from phi3_jax import flops, metrics, train
from phi3_jax.config import ConfigError
from phi3_jax.tpu import Topology, num_slices, parse_topology, topology_mesh

GIB = 1024**3


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
