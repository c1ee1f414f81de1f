"""Shared pieces of the variant configs: the model architectures, and `get_config(variant)`.

Architectures are those of the released Hugging Face configs (../shared/reference/PHI3.md §1).
"""

from __future__ import annotations

import ml_collections

from phi3_jax import config as config_lib
from phi3_jax.data.tiktoken_tokenizer import PHI3_SMALL_DUMMY_TOKEN_IDS

# Phi-3-mini-128k (April 2024 release, rope_scaling type "su"): LongRoPE factors, 48 = head_dim / 2.
LONGROPE_SHORT_FACTOR = (
    1.05,
    1.05,
    1.05,
    1.1,
    1.1,
    1.1500000000000001,
    1.2000000000000002,
    1.2500000000000002,
    1.3000000000000003,
    1.3500000000000003,
    1.5000000000000004,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.0500000000000007,
    2.0500000000000007,
    2.0500000000000007,
    2.1000000000000005,
    2.1000000000000005,
    2.1000000000000005,
    2.1500000000000004,
    2.1500000000000004,
    2.3499999999999996,
    2.549999999999999,
    2.5999999999999988,
    2.5999999999999988,
    2.7499999999999982,
    2.849999999999998,
    2.849999999999998,
    2.9499999999999975,
)
LONGROPE_LONG_FACTOR = (
    1.0299999713897705,
    1.0499999523162842,
    1.0499999523162842,
    1.0799999237060547,
    1.2299998998641968,
    1.2299998998641968,
    1.2999999523162842,
    1.4499999284744263,
    1.5999999046325684,
    1.6499998569488525,
    1.8999998569488525,
    2.859999895095825,
    3.68999981880188,
    5.419999599456787,
    5.489999771118164,
    5.489999771118164,
    9.09000015258789,
    11.579999923706055,
    15.65999984741211,
    15.769999504089355,
    15.789999961853027,
    18.360000610351562,
    21.989999771118164,
    23.079999923706055,
    30.009998321533203,
    32.35000228881836,
    32.590003967285156,
    35.56000518798828,
    39.95000457763672,
    53.840003967285156,
    56.20000457763672,
    57.95000457763672,
    59.29000473022461,
    59.77000427246094,
    59.920005798339844,
    61.190006256103516,
    61.96000671386719,
    62.50000762939453,
    63.3700065612793,
    63.48000717163086,
    63.48000717163086,
    63.66000747680664,
    63.850006103515625,
    64.08000946044922,
    64.760009765625,
    64.80001068115234,
    64.81001281738281,
    64.81001281738281,
)

_PHI3_MINI = dict(
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    max_position_embeddings=4096,
    original_max_position_embeddings=4096,
    sliding_window=2047,
    bos_token_id=1,
    eos_token_id=32000,
    pad_token_id=32000,
)

# Phi-3-small-8k (PHI3.md §3): LayerNorm, GEGELU, muP, blocksparse on even layers, tied embeddings.
_PHI3_SMALL = dict(
    architecture="phi3small",
    vocab_size=100352,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    max_position_embeddings=8192,
    original_max_position_embeddings=8192,
    rope_theta=1e6,
    bos_token_id=100257,
    eos_token_id=100257,
    pad_token_id=100257,
    dummy_token_ids=PHI3_SMALL_DUMMY_TOKEN_IDS,
)

MODELS = {
    # A few-MB model with the mini's structure and vocabulary, for tests and the CPU demo.
    "tiny": dict(
        _PHI3_MINI,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        sliding_window=0,
        dtype="float32",
    ),
    "mini": _PHI3_MINI,
    "mini_128k": dict(
        _PHI3_MINI,
        max_position_embeddings=131072,
        rope_scaling="longrope",
        rope_short_factor=LONGROPE_SHORT_FACTOR,
        rope_long_factor=LONGROPE_LONG_FACTOR,
        sliding_window=262144,
    ),
    "small": _PHI3_SMALL,
    # Phi-3-small's structure at test size: blocks of 8 tokens, so 48 tokens reach the vertical
    # stripes; the top 16 ids play the dummy tokens.
    "small_tiny": dict(
        _PHI3_SMALL,
        vocab_size=512,
        hidden_size=64,
        intermediate_size=96,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        blocksparse_block_size=8,
        blocksparse_num_local_blocks=2,
        blocksparse_vert_stride=4,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=1,
        dummy_token_ids=tuple(range(496, 512)),
        dtype="float32",
    ),
    "medium": dict(
        _PHI3_MINI,
        hidden_size=5120,
        intermediate_size=17920,
        num_layers=40,
        num_heads=40,
        num_kv_heads=10,
    ),
}


def get_config(variant: str) -> ml_collections.ConfigDict:
    """The default run configuration with the named model variant, validated."""
    if variant not in MODELS:
        raise config_lib.ConfigError(
            f"variant={variant!r}: unknown; expected one of {', '.join(sorted(MODELS))}"
        )
    config = config_lib.default_config()
    config.variant = variant
    config.model.update(MODELS[variant])
    config.model.name = variant
    return config_lib.validate(config)
