"""Phi-3-medium (14B, 4K context, GQA 40/10 heads); `:tpu=v5p-128` etc. add a hardware preset."""

from configs import base

# 1024 rows of 4096 tokens; see phi3_mini.py for how the presets were sized. v5p-128: 62.13 of
# 95 GiB a chip at 16 rows in one microbatch, v4-128: 20.86 of 32 at 4 microbatches of 4 rows,
# v5e-256: 9.34 of 16 at 2 of 2 (`python -m phi3_jax.aot`); gpu keeps dense attention.
PRESETS = {
    "tpu=v5p-128": base.tpu_preset(fsdp=64, microbatches=1),
    "tpu=v5e-256": base.tpu_preset(fsdp=256, microbatches=2),
    "tpu=v4-128": base.tpu_preset(fsdp=64, microbatches=4),
    "gpu=h100x64": dict(
        mesh=dict(data=1, fsdp=64, tensor=1), model=dict(remat="full"), train=dict(microbatches=8)
    ),
}


def get_config(arg: str | None = None):
    # 4.8T tokens at 4K context (report §2, PHI3.md §5.1); lr 3e-4 (Llama 2 13B).
    config = base.pretraining(base.get_config("medium"), tokens=4.8e12, seq_len=4096, lr=3e-4)
    return base.with_preset(config, arg, PRESETS)
