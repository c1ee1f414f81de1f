"""Phi-3-small (7.4B, 8K context); `--config=configs/phi3_small.py:tiny` for its test-size twin,
`:tpu=v5p-128` etc. for a hardware preset."""

from configs import base
from phi3_jax.config import ConfigError

_VARIANTS = {None: "small", "": "small", "tiny": "small_tiny"}
# Phi-3-small's tokenizer is tiktoken's cl100k_base ranks plus its special and dummy ids. The ranks
# cannot be downloaded here: put cl100k_base.tiktoken (from openaipublic.blob.core.windows.net/
# encodings/) there, or point --config.data.tokenizer.path at it. The tiny model has its own small
# ranks file, trained on the bundled corpus (`make data`).
CL100K_RANKS = "~/.cache/phi3_jax/cl100k_base.tiktoken"
TINY_RANKS = "data/tokenizer_small.tiktoken"

# 512 rows of 8192 tokens. The dense layers' fp32 scores are [rows, heads, 8192, 8192], 4x a 4K
# row's, so each chip takes one row per microbatch. On a TPU torus every mesh axis must be a
# product of torus edges (4x4x4, 16x16): tensor=2 or 4 cannot be laid out there. There is no v5e
# preset: one row per chip needs 17.2 GiB of a v5e chip's 16 (python -m phi3_jax.aot, README).
PRESETS = {
    "tpu=v5p-128": dict(
        mesh=dict(data=1, fsdp=64, tensor=1), model=dict(remat="full"), train=dict(microbatches=8)
    ),
    "tpu=v4-128": dict(
        mesh=dict(data=1, fsdp=64, tensor=1), model=dict(remat="full"), train=dict(microbatches=8)
    ),
    # 8 nodes of 8 H100-80G: tensor parallelism inside a pair of GPUs halves the heads per GPU.
    "gpu=h100x64": dict(
        mesh=dict(data=1, fsdp=32, tensor=2), model=dict(remat="full"), train=dict(microbatches=8)
    ),
}


def get_config(arg: str | None = None):
    if arg in _VARIANTS:
        config = base.get_config(_VARIANTS[arg])
        if arg == "tiny":
            config.data.tokenizer.update(kind="tiktoken", path=TINY_RANKS)
            return config
    elif arg not in PRESETS:
        raise ConfigError(
            f"configs/phi3_small.py:{arg}: unknown; expected nothing, 'tiny' or one of "
            f"{', '.join(sorted(PRESETS))}"
        )
    else:
        config = base.get_config("small")
    config.data.tokenizer.update(kind="tiktoken", path=CL100K_RANKS)
    # 4.8T tokens at 8K context (report §2, PHI3.md §5.1); lr 3e-4 (Llama 2 7B).
    config = base.pretraining(config, tokens=4.8e12, seq_len=8192, lr=3e-4)
    return base.with_preset(config, arg or None, PRESETS)
