"""`python -m phi3_jax.convert hf-to-orbax|orbax-to-hf`: Hugging Face <-> phi3_jax checkpoints.

  python -m phi3_jax.convert hf-to-orbax --hf_dir=DIR --out=CKPT
  python -m phi3_jax.convert orbax-to-hf --ckpt=CKPT --out=DIR

The orbax side is a params-only checkpoint (params + config.json) that training can start from.
"""

from __future__ import annotations

from absl import app, flags

from phi3_jax import checkpoint
from phi3_jax.model import hf

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face Phi-3 directory to read.")
_CKPT = flags.DEFINE_string("ckpt", None, "phi3_jax params checkpoint to read.")
_OUT = flags.DEFINE_string("out", None, "Directory to write (must not exist).")


def hf_to_orbax(hf_dir: str, out: str) -> None:
    config, params = hf.load_hf(hf_dir)
    checkpoint.save_params(out, config, params)


def orbax_to_hf(ckpt: str, out: str) -> None:
    config, params = checkpoint.load_params_checkpoint(ckpt)
    hf.save_hf(config, params, out)


def main(argv: list[str]) -> None:
    commands = {"hf-to-orbax": (_HF_DIR, hf_to_orbax), "orbax-to-hf": (_CKPT, orbax_to_hf)}
    if len(argv) != 2 or argv[1] not in commands:
        raise app.UsageError(f"expected one command of {', '.join(commands)}, got {argv[1:]}")
    source, command = commands[argv[1]]
    for flag in (source, _OUT):
        if not flag.value:
            raise app.UsageError(f"{argv[1]} needs --{flag.name}")
    command(source.value, _OUT.value)
    print(f"{argv[1]}: wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
