"""`python -m phi3_jax.convert hf-to-orbax|orbax-to-hf`: Hugging Face <-> phi3_jax checkpoints.

  python -m phi3_jax.convert hf-to-orbax --hf_dir=DIR --out=CKPT
  python -m phi3_jax.convert orbax-to-hf --ckpt=RUN|RUN/checkpoints|RUN/checkpoints/STEP|CKPT \
      [--step=N] --out=DIR

hf-to-orbax writes a params-only checkpoint (params + config.json) that training can start from.
orbax-to-hf exports a training run's latest checkpoint (or --step's) with the run's tokenizer
files, so that transformers' AutoModelForCausalLM and AutoTokenizer load DIR; a params-only
checkpoint exports its weights and config.json only (it names no tokenizer of its own). A path,
step or file that does not fit is one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging

from phi3_jax import paths
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.model import hf
from phi3_jax.train import restore as restore_lib

FLAGS = flags.FLAGS
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face Phi-3 directory to read.")
_CKPT = flags.DEFINE_string(
    "ckpt", None, "A run (WORKDIR, WORKDIR/checkpoints or .../STEP) or a params checkpoint."
)
_STEP = flags.DEFINE_integer("step", None, "orbax-to-hf: the run's step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Directory to write (must not exist).")


def hf_to_orbax(hf_dir: str, out: str) -> None:
    with paths.local_directory(hf_dir) as local:
        config, params = hf.load_hf(local)
    params_checkpoint.save_params(out, config, params)


def orbax_to_hf(ckpt: str, out: str, step: int | None = None) -> None:
    """Export a run's checkpoint with its tokenizer, or a params checkpoint, to `out`."""
    kind, path, step = params_checkpoint.locate(ckpt, step)
    if kind == "params":
        config, params = params_checkpoint.load_params_checkpoint(path)
        hf.save_hf(config, params, out)
        return
    config, params, step = restore_lib.restore_params_of_run(path, step)
    tokenizer = load_tokenizer(config)
    hf.save_hf(config, jax.device_get(params), out, write_also=tokenizer.save_hf)


def main(argv: list[str]) -> None:
    commands = {
        "hf-to-orbax": (_HF_DIR, hf_to_orbax),
        "orbax-to-hf": (_CKPT, lambda ckpt, out: orbax_to_hf(ckpt, out, _STEP.value)),
    }
    if len(argv) != 2 or argv[1] not in commands:
        raise app.UsageError(f"expected one command of {', '.join(commands)}, got {argv[1:]}")
    source, command = commands[argv[1]]
    if not FLAGS["verbosity"].present:
        # orbax logs every restore at INFO and WARNING; errors and the result are the output.
        logging.set_verbosity(logging.ERROR)
    for flag in (source, _OUT):
        if not flag.value:
            raise app.UsageError(f"{argv[1]} needs --{flag.name}")
    try:
        command(source.value, _OUT.value)
    except (OSError, ValueError) as error:  # Bad paths, files, steps, configs: one line each.
        sys.exit(f"{argv[1]}: {error}")
    print(f"{argv[1]}: wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
