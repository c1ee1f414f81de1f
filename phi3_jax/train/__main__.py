"""`python -m phi3_jax.train --config=configs/phi3_tiny.py --workdir=DIR [--config.KEY=VALUE ...]`

Trains to `train.steps`, resuming from DIR/checkpoints when it holds any. Unknown config keys,
invalid values, an unusable workdir and a non-finite loss end it with a one-line error.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from phi3_jax import checkpoint, distributed
from phi3_jax import config as config_lib
from phi3_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and TensorBoard go here.")


def _missing_key(error: LookupError | AttributeError, argv: list[str]) -> str:
    """`--config.A.B: unknown config key|section (did you mean X?)` from ml_collections' error,
    whose text is the quoted key and, on a second line, its suggestion."""
    lines = str(error).strip("\"'").replace("\\'", "'").replace("\\n", "\n").splitlines()
    key = lines[0].strip("'\"") if lines else ""
    named = [
        arg.split("=")[0]
        for arg in argv
        if arg.startswith("--config.") and key in arg.split("=")[0].split(".")
    ]
    flag = named[0] if named else key
    kind = "section" if flag.split(".")[-1] != key else "key"
    suggestion = re.search(r'Did you mean "([^"]+)"', str(error))
    return f"{flag}: unknown config {kind}" + (
        f" (did you mean {suggestion.group(1)}?)" if suggestion else ""
    )


def _config_file_error(error: flags.IllegalFlagValueError) -> str:
    """One line for a flag value that does not parse: the flag, and for a config file whose
    get_config fails (an unknown preset) the last line of its error, which ml_collections folds
    into the message with its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    flag, _, why = lines[0].removeprefix("flag ").partition(": Error whilst parsing config file")
    if not why:
        return lines[0]
    cause = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
    return f"{flag}: {cause}"


def _missing_config_file(argv: list[str]) -> str | None:
    # ml_collections defers a missing file's error to the first use of the config.
    for arg in argv:
        if arg.startswith("--config="):
            path = arg.removeprefix("--config=").split(":")[0]
            if not os.path.isfile(path):
                return f"{arg}: no such config file {os.path.abspath(path)}"
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; an unknown config key or section, a config file that is missing or
    whose get_config fails (an unknown preset) is a one-line error naming it (ml_collections
    raises a bare KeyError/AttributeError, or folds a traceback into the message)."""
    missing = _missing_config_file(argv)
    if missing:
        sys.exit(f"error: {missing}")
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError) as error:
        for arg in argv:
            name = arg.split("=")[0]
            why = config_lib.REMOVED_KEYS.get(name.removeprefix("--config."))
            if why:
                sys.exit(f"error: {name}: {why}")
        sys.exit(f"error: {_missing_key(error, argv)}")
    except flags.IllegalFlagValueError as error:
        sys.exit(f"error: {_config_file_error(error)}")
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
        # Validated once, the command line's overrides in; frozen from here on.
        loop.train(config_lib.freeze(_CONFIG.value), _WORKDIR.value)
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
