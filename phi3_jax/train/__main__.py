"""`python -m phi3_jax.train --config=configs/phi3_tiny.py --workdir=DIR [--config.KEY=VALUE ...]`

Trains to `train.steps`, resuming from DIR/checkpoints when it holds any. Unknown config keys,
invalid values, an unusable workdir and a non-finite loss end it with a one-line error.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phi3_jax import checkpoint, distributed
from phi3_jax import config as config_lib
from phi3_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard go here.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; an override of a key the config lacks is a one-line error naming it
    (ml_collections raises a bare AttributeError of the key)."""
    try:
        return flags.FLAGS(argv)
    except AttributeError as error:
        for arg in argv:
            name = arg.split("=")[0]
            why = config_lib.REMOVED_KEYS.get(name.removeprefix("--config."))
            if why:
                sys.exit(f"error: {name}: {why}")
        key = str(error).strip("\"'")
        named = [
            arg.split("=")[0]
            for arg in argv
            if arg.startswith("--config.") and key in arg.split("=")[0].split(".")
        ]
        sys.exit(f"error: {', '.join(named) or key}: unknown config key")
    except flags.Error as error:
        sys.exit(f"error: {error}")


def _not_orbax_error(record: std_logging.LogRecord) -> bool:
    # orbax logs a failed save with its tracebacks (hundreds of lines); the loop reports every
    # failed save or restore in one line of its own.
    return not (record.levelno >= std_logging.ERROR and "/orbax/" in record.pathname)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # orbax and grain log every save and restore at INFO; the progress lines are enough.
        logging.set_verbosity(logging.WARNING)
        logging.get_absl_handler().addFilter(_not_orbax_error)
    distributed.initialize()
    try:
        loop.train(_CONFIG.value, _WORKDIR.value)
    except (
        config_lib.ConfigError,
        loop.WorkdirError,
        loop.NonFiniteError,
        checkpoint.SaveError,
    ) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
