"""Per-chip memory and estimated MFU of mini, small and medium on a TPU preset each, from an
ahead-of-time compile of the real train step on this CPU (`phi3_jax.aot.plan`; nothing runs).
Each compile takes minutes here; `--aot_variants` picks which to run.

    python -m bench.aot_fit [--aot_variants=mini,small,medium] [--aot_preset=tpu=v5p-128]
"""

from __future__ import annotations

from absl import app, flags

from configs import phi3_medium, phi3_mini, phi3_small
from phi3_jax import aot, tpu

RESULT_KEY = "aot"
CONFIGS = {"mini": phi3_mini, "small": phi3_small, "medium": phi3_medium}

_VARIANTS = flags.DEFINE_list("aot_variants", list(CONFIGS), "variants to compile")
# v5p-128: the preset all three variants define.
_PRESET = flags.DEFINE_string("aot_preset", "tpu=v5p-128", "hardware preset of each variant")


def run() -> dict[str, dict]:
    """Plan each variant on the preset's topology; print and return the figures."""
    figures = {}
    topology = tpu.parse_topology(_PRESET.value.removeprefix("tpu="))
    for name in _VARIANTS.value:
        config = CONFIGS[name].get_config(_PRESET.value)
        report = aot.plan(config, topology)
        figures[name] = {
            "preset": _PRESET.value,
            "mesh": report.mesh,
            "per_chip_gib": report.memory.total / aot.GIB,
            "hbm_gib": report.hbm_bytes / aot.GIB,
            "fits": report.fits,
            "estimated_mfu": report.mfu,
            "compile_s": report.compile_seconds,
        }
        print(f"aot {name}:\n" + aot.format_report(config, report))
    return figures


def main(argv: list[str]) -> None:
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
