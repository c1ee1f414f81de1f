"""Phi-3-mini (3.8B, 4K context)."""

from configs import base


def get_config(arg: str | None = None):
    del arg  # Per-target presets arrive with the scale work.
    return base.get_config("mini")
