"""Phi-3-mini-128K (3.8B, LongRoPE to 131072 tokens)."""

from configs import base


def get_config(arg: str | None = None):
    del arg  # Per-target presets arrive with the scale work.
    return base.get_config("mini_128k")
