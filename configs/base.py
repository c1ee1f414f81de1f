"""Shared pieces of the variant configs: the model architectures, and `get_config(variant)`.

Architectures are those of the released Hugging Face configs (../shared/reference/PHI3.md §1).
"""

from __future__ import annotations

import ml_collections

from phi3_jax import config as config_lib
from phi3_jax.vocab import PHI3_SMALL_DUMMY_TOKEN_IDS, phi3_small_dummy_ids

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
    # stripes. Its tokenizer (data/tokenizer_small.tiktoken) has 416 ranks, then Phi-3-small's 96
    # special and dummy ids in Phi-3-small's layout (<|endoftext|> 417).
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
        bos_token_id=417,
        eos_token_id=417,
        pad_token_id=417,
        dummy_token_ids=phi3_small_dummy_ids(416),
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


# Phi-3's two-phase data recipe (report §3, PHI3.md §5.2): phase 1 mostly web; phase 2 a more
# heavily filtered subset of that web with synthetic textbooks. The weights and the phase-2 start
# are ours (the report gives no split). `web` and `web_strict` are phi3_jax.data.prepare's phase 1
# and 2 outputs, `synthetic` phi3_jax.data.synthetic's.
PHASES = dict(phase1={"web": 1.0}, phase2={"web_strict": 0.6, "synthetic": 0.4})
# The bundled demo corpus (`make data`, data/README.md): the test-size variants train on it. A
# full-size variant names the same sources with their shards unset, so a run that does not set
# them (`--config.data.sources.web.globs=...`) stops with a line naming the key.
DEMO_GLOBS = {
    "web": "data/web/phase1/*.jsonl.zst",
    "web_strict": "data/web/phase2/*.jsonl.zst",
    "synthetic": "data/synthetic/*.jsonl.zst",
}
TEST_SIZE = ("tiny", "small_tiny")
# Phase 2 from the last fifth of the schema's 1000 default steps (pretraining() moves it).
PHASE2_START_STEP = 800


def data_recipe(variant: str) -> dict:
    """The `data` section's sources and phases of `variant`: the demo corpus at test size, the
    same sources unset at full size."""
    globs = DEMO_GLOBS if variant in TEST_SIZE else dict.fromkeys(DEMO_GLOBS, "")
    sources = {name: config_lib.data_source(g) for name, g in globs.items()}
    return dict(sources=sources, phase2_start_step=PHASE2_START_STEP, **PHASES)


def get_config(variant: str) -> ml_collections.ConfigDict:
    """The default run configuration with the named model variant and its data recipe."""
    if variant not in MODELS:
        raise config_lib.ConfigError(
            f"variant={variant!r}: unknown; expected one of {', '.join(sorted(MODELS))}"
        )
    config = config_lib.default_config()
    config.variant = variant
    config.model.update(MODELS[variant])
    config.model.name = variant
    for key, value in data_recipe(variant).items():
        config.data[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


# Pretraining recipe of the full-size variants. Phi-3's report does not publish its batch,
# optimizer or schedule (PHI3.md §5.1 [U]); these are Llama 2's (Touvron et al. 2023,
# arXiv:2307.09288 §2.2: AdamW b1=0.9, b2=0.95, eps=1e-5, cosine schedule with 2000 warmup steps
# decaying to 10% of the peak, weight decay 0.1, gradient clipping 1.0, 4M-token batches), the
# public record nearest in size (7B and 13B, peak lr 3e-4).
LLAMA2_OPTIM = dict(
    schedule="cosine",
    b1=0.9,
    b2=0.95,
    eps=1e-5,
    warmup_steps=2000,
    min_lr_ratio=0.1,
    weight_decay=0.1,
    clip_norm=1.0,
)
# Llama 2's batch: 4M tokens (2^22).
BATCH_TOKENS = 4 * 1024 * 1024


def pretraining(
    config: ml_collections.ConfigDict, *, tokens: float, seq_len: int, lr: float
) -> ml_collections.ConfigDict:
    """Sets a 4M-token global batch of `seq_len` rows, enough steps for `tokens`, and the Llama 2
    optimizer at peak `lr`; phase 2 of the data mixture takes the last tenth of the steps (the
    report gives no split)."""
    config.train.seq_len = seq_len
    config.train.global_batch_size = BATCH_TOKENS // seq_len
    config.train.steps = -(-int(tokens) // BATCH_TOKENS)
    config.optim.update(LLAMA2_OPTIM, lr=lr)
    config.data.phase2_start_step = config.train.steps * 9 // 10
    return config


def tpu_preset(fsdp: int, microbatches: int) -> dict:
    """A TPU hardware preset: FSDP over `fsdp` chips, full remat, splash attention (no [q, k]
    score matrix, so a chip can take all its rows in one microbatch) and the loss 1024 positions
    at a time (one chunk's fp32 logits)."""
    return dict(
        mesh=dict(data=1, fsdp=fsdp, tensor=1),
        model=dict(remat="full", attention="splash"),
        train=dict(microbatches=microbatches, loss_chunk=1024),
    )


def with_preset(
    config: ml_collections.ConfigDict, arg: str | None, presets: dict[str, dict]
) -> ml_collections.ConfigDict:
    """Applies the named hardware preset (`tpu=v5e-256`, `gpu=h100x64`, ...): a dict of config
    sections to update (mesh, model.remat, train.microbatches). No arg: the config as it is."""
    if not arg:
        return config
    if arg not in presets:
        raise config_lib.ConfigError(
            f"preset={arg!r}: unknown for {config.model.name}; expected one of "
            f"{', '.join(sorted(presets))}"
        )
    for section, values in presets[arg].items():
        config[section].update(values)
    return config


def posttraining(
    arg: str | None, source: str, demo_globs: str, tiny: dict, full_size: dict
) -> ml_collections.ConfigDict:
    """A post-training run (configs/phi3_sft.py, phi3_dpo.py) of variant `arg` (default tiny): one
    data source `source` (2% held out, no phase 2) replacing the pretraining mixture, its shards
    `demo_globs` (the bundled set) for tiny and unset (the run names them) at full size, and the
    sections of `tiny` or `full_size` updated."""
    variant = arg or "tiny"
    config = get_config(variant)
    # Replaced, not merged: the pretraining sources and phases are not part of the run.
    globs = demo_globs if variant == "tiny" else ""
    config.data.sources = ml_collections.ConfigDict({source: config_lib.data_source(globs)})
    config.data.phase1 = ml_collections.ConfigDict({source: 1.0})
    config.data.phase2 = ml_collections.ConfigDict()
    config.data.update(phase2_start_step=0, eval_fraction=0.02)
    for section, values in (tiny if variant == "tiny" else full_size).items():
        config[section].update(values)
    return config
