"""Phi-3-mini-128K (3.8B, LongRoPE to 131072 tokens); `:tpu=v5e-256` etc. add a hardware preset.

Pretrained like phi3_mini (the report's 3.3T tokens at 4K, then LongRoPE extension whose data and
steps are not disclosed, PHI3.md §5.5), so it shares mini's recipe and presets.
"""

from configs import base, phi3_mini


def get_config(arg: str | None = None):
    config = base.pretraining(base.get_config("mini_128k"), tokens=3.3e12, seq_len=4096, lr=3e-4)
    return base.with_preset(config, arg, phi3_mini.PRESETS)
