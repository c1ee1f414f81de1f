"""`python -m phi3_jax.model.summary --config=configs/phi3_mini.py`: every parameter's path, shape,
dtype and logical axes, and the total count, from `jax.eval_shape` (nothing is allocated)."""

from __future__ import annotations

import sys

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from phi3_jax import config as config_lib
from phi3_jax.model import functional

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)


def summary_lines(config: ml_collections.ConfigDict) -> list[str]:
    """One line per parameter, then the total."""
    shapes = functional.abstract_params(config)
    axes = jax.tree.leaves(
        functional.logical_axes(config),
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    lines = []
    for (path, shape), spec in zip(jax.tree_util.tree_leaves_with_path(shapes), axes, strict=True):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        lines.append(f"{name:<48} {shape.dtype!s:<9} {shape.shape!s:<24} {tuple(spec)}")
    total = sum(x.size for x in jax.tree.leaves(shapes))
    lines.append(f"total: {total:,} parameters")
    return lines


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = config_lib.freeze(_CONFIG.value)
    except config_lib.ConfigError as e:
        sys.exit(f"error: {e}")
    print("\n".join(summary_lines(config)))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
