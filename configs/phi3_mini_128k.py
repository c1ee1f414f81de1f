"""Phi-3-mini-128K (3.8B, LongRoPE to 131072 tokens); `:tpu=v5e-256` etc. add a hardware preset.

Pretrained like phi3_mini (the report's 3.3T tokens at 4K, then LongRoPE extension whose data and
steps are not disclosed, PHI3.md §5.5), so it shares mini's recipe and presets. `:extend,tpu=v5p-128`
is the extension stage's shape instead: 131,072-token rows (32 per 4M-token step), each split over
16 chips of the sequence axis, chunked attention and loss (checked with `python -m phi3_jax.aot`).
"""

from configs import base, phi3_mini

# The extension stage at the full context: 32 rows of 131,072 tokens (4M tokens a step) in 8
# microbatches of 4, one row per fsdp group, each row split over the 16 chips of the sequence
# axis (8192 tokens a chip); chunked attention never forms a [q, k] score matrix, the chunked
# loss never a whole row's logits. On the 4x4x4 torus an axis is 4, 16 or 64 chips; fsdp=16 with
# sequence=4 needs 144 GiB a chip (`python -m phi3_jax.aot`).
EXTENSION_PRESETS = {
    "extend,tpu=v5p-128": dict(
        mesh=dict(data=1, fsdp=4, sequence=16, tensor=1),
        model=dict(remat="full", attention="chunked", attention_chunk=512),
        train=dict(seq_len=131072, global_batch_size=32, microbatches=8, loss_chunk=4096),
    ),
}


def get_config(arg: str | None = None):
    config = base.pretraining(base.get_config("mini_128k"), tokens=3.3e12, seq_len=4096, lr=3e-4)
    return base.with_preset(config, arg, {**phi3_mini.PRESETS, **EXTENSION_PRESETS})
