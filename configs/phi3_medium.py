"""Phi-3-medium (14B, 4K context, GQA 40/10 heads)."""

from configs import base


def get_config(arg: str | None = None):
    del arg  # Per-target presets arrive with the scale work.
    return base.get_config("medium")
