"""A tiny Phi-3 for tests and the CPU demo."""

from configs import base


def get_config(arg: str | None = None):
    del arg  # Per-target presets arrive with the scale work.
    return base.get_config("tiny")
