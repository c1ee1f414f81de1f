"""Phi-3-small (7.4B, 8K context); `--config=configs/phi3_small.py:tiny` for its test-size twin."""

from configs import base
from phi3_jax.config import ConfigError

_VARIANTS = {None: "small", "": "small", "tiny": "small_tiny"}


def get_config(arg: str | None = None):
    if arg not in _VARIANTS:
        raise ConfigError(f"configs/phi3_small.py:{arg}: unknown; expected nothing or 'tiny'")
    return base.get_config(_VARIANTS[arg])
