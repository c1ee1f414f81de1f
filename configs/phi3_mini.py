"""Phi-3-mini (3.8B, 4K context); `--config=configs/phi3_mini.py:tpu=v5e-256` adds a hardware
preset (mesh, remat, microbatches), checked with `python -m phi3_jax.aot`."""

from configs import base

# Per-chip rows: 1024 rows of 4096 tokens over the devices, split into microbatches; full remat
# keeps only each block's input. On TPU (`base.tpu_preset`) the splash kernel never holds a [q, k]
# score matrix (dense attention keeps [rows, heads, 4096, 4096] per layer, which capped rows per
# chip per microbatch) and the chunked loss one 1024-position chunk's logits, so a chip takes all
# its rows in one microbatch (v5e-256: 6.49 GiB of 16 at 4 rows, v5p-128: 34.33 of 95 at 16) or
# two (v4-128: 18.62 of 32 at 8; `python -m phi3_jax.aot`).
PRESETS = {
    "tpu=v5e-256": base.tpu_preset(fsdp=256, microbatches=1),
    "tpu=v5p-128": base.tpu_preset(fsdp=64, microbatches=1),
    "tpu=v4-128": base.tpu_preset(fsdp=64, microbatches=2),
    # 8 nodes of 8 H100-80G: FSDP over all 64 GPUs, 2 rows per GPU per microbatch.
    "gpu=h100x64": dict(
        mesh=dict(data=1, fsdp=64, tensor=1), model=dict(remat="full"), train=dict(microbatches=8)
    ),
}


def get_config(arg: str | None = None):
    # 3.3T tokens at 4K context (report §2, PHI3.md §5.1); lr 3e-4 (Llama 2 7B).
    config = base.pretraining(base.get_config("mini"), tokens=3.3e12, seq_len=4096, lr=3e-4)
    return base.with_preset(config, arg, PRESETS)
