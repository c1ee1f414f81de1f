"""The `model` section: the architecture's keys (tiny test model's values) and their validation."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail, is_int, require_positive_int

MODEL_DTYPES = ("float32", "bfloat16", "float16")
ROPE_SCALINGS = ("none", "longrope")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Attention kernels (phi3_jax.model.attention); one the backend cannot run falls back with a log line.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "splash", "chunked")
ATTENTION_SCORE_DTYPES = ("float32", "bfloat16")
# phi3: mini/medium (RMSNorm, SwiGLU, untied); phi3small: Phi-3-small (LayerNorm, GEGELU, muP, blocksparse).
ARCHITECTURES = ("phi3", "phi3small")


def default_model_config() -> ml_collections.ConfigDict:
    """Architecture keys, with the values of the tiny test model."""
    m = ml_collections.ConfigDict()
    # Human-readable name of the variant (informational).
    m.name = "tiny"
    # Token embedding rows (Phi-3 mini/medium: 32000 sentencepiece pieces padded to 32064).
    m.vocab_size = 512
    # Width of the residual stream.
    m.hidden_size = 64
    # Width of each half of the SwiGLU MLP (gate and up).
    m.intermediate_size = 128
    # Number of decoder blocks.
    m.num_layers = 2
    # Query heads; head_dim = hidden_size // num_heads.
    m.num_heads = 4
    # Key/value heads (GQA when fewer than num_heads; must divide num_heads).
    m.num_kv_heads = 4
    # Longest sequence the model is meant for (LongRoPE: 131072 for mini-128k).
    m.max_position_embeddings = 256
    # LongRoPE: the pretraining context; longer sequences switch to the long factors.
    m.original_max_position_embeddings = 256
    # RoPE base.
    m.rope_theta = 10000.0
    # "none" (plain RoPE) or "longrope" (Phi-3 128K: per-frequency short/long factors).
    m.rope_scaling = "none"
    # LongRoPE rescale factors, head_dim // 2 each (empty when rope_scaling is "none").
    m.rope_short_factor = ()
    m.rope_long_factor = ()
    # LongRoPE cos/sin scale; 0 derives HF's default sqrt(1 + ln(max/orig) / ln(orig)).
    m.rope_attention_factor = 0.0
    # RMSNorm epsilon.
    m.rms_norm_eps = 1e-5
    # Keys visible to a query, itself included (HF semantics: j > i - window); 0 disables.
    m.sliding_window = 0
    # Std of the normal initialiser (HF's initializer_range).
    m.initializer_range = 0.02
    # Special token ids (Phi-3 mini/medium: <s>=1, <|endoftext|>=32000); -1: none.
    m.bos_token_id = 1
    m.eos_token_id = 2
    m.pad_token_id = 0
    # Storage dtype of parameters (master weights).
    m.param_dtype = "float32"
    # Compute dtype of activations and matmuls; norms, softmax and logits stay in float32.
    m.dtype = "bfloat16"
    # True: layers under nn.scan (one compiled block); False: fully unrolled (same parameters).
    m.scan_layers = True
    # True: every projection (and lm_head) sees its input's [batch, length] as one token axis,
    # so each gradient dot contracts one axis; XLA:CPU transposes an activation to run a dot
    # that contracts two, layout copies that cost the bench model's CPU step 12-20% of its time
    # (README, Performance).
    m.flat_projections = False
    # Rematerialisation of each block: none, full, dots (save all matmul outputs),
    # dots_no_batch (save matmuls without batch dimensions, i.e. the projections).
    m.remat = "none"
    # Attention kernel (phi3 only): einsum (plain), xla | cudnn (jax.nn.dot_product_attention),
    # splash (TPU Pallas), chunked (online softmax over key chunks, no [q, k] score matrix).
    m.attention = "einsum"
    # chunked: keys per chunk (must divide train.seq_len; a shorter sequence is one chunk).
    m.attention_chunk = 512
    # einsum: dtype of the scores and their softmax; float32 as HF, bfloat16 (MaxText's default,
    # `float32_qk_product` and `float32_logits` false) halves the score matrices a step keeps.
    m.attention_score_dtype = "float32"
    # Decoder family: "phi3" or "phi3small"; the keys below are read by phi3small only.
    m.architecture = "phi3"
    # LayerNorm epsilon (Phi-3-small's norms are LayerNorms with a bias).
    m.layer_norm_eps = 1e-5
    # GEGELU clamp: the gelu half is clipped above at it, the linear half to [-limit, limit].
    m.gegelu_limit = 20.0
    # muP: token embeddings are multiplied by this (after embedding dropout).
    m.mup_embedding_multiplier = 10.0
    # muP: softmax scale is mup_attn_multiplier / head_dim when mup_use_scaling, else 1/sqrt(head_dim).
    m.mup_attn_multiplier = 1.0
    m.mup_use_scaling = True
    # muP: logits are divided by this.
    m.mup_width_multiplier = 8.0
    # Blocksparse attention: tokens per block, recent blocks always kept (own block included).
    m.blocksparse_block_size = 64
    m.blocksparse_num_local_blocks = 16
    # Blocksparse: every vert_stride-th key block is kept too, offset per query head.
    m.blocksparse_vert_stride = 8
    # Blocksparse: the same vertical stripes for every head (Phi-3-small: false, per-head offsets).
    m.blocksparse_homo_head_pattern = False
    # Layer i is dense iff (i + 1) % this == 0, blocksparse otherwise (Phi-3-small: 2).
    m.dense_attention_every_n_layers = 2
    # Dropout on the token embeddings and on each MLP output, in training only.
    m.embedding_dropout = 0.1
    m.ffn_dropout = 0.1
    # Token ids whose logits are forced to -inf (Phi-3-small: the tokenizer's dummy/unused ids).
    m.dummy_token_ids = ()
    return m


def head_dim(model: ml_collections.ConfigDict) -> int:
    """Per-head width, hidden_size // num_heads (Phi-3 has no separate head_dim key)."""
    return model.hidden_size // model.num_heads


def validate_model(model: ml_collections.ConfigDict, prefix: str = "model") -> None:
    """Raise ConfigError naming the first invalid model key."""
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "max_position_embeddings",
        "original_max_position_embeddings",
    ):
        value = model[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(f"{prefix}.{key}", value, "must be a positive integer")
    if model.rope_attention_factor < 0:
        fail(f"{prefix}.rope_attention_factor", model.rope_attention_factor, "must be >= 0")
    for key in ("rope_theta", "rms_norm_eps", "initializer_range"):
        if not model[key] > 0:
            fail(f"{prefix}.{key}", model[key], "must be positive")
    if model.hidden_size % model.num_heads:
        fail(
            f"{prefix}.num_heads",
            model.num_heads,
            f"must divide {prefix}.hidden_size={model.hidden_size}",
        )
    if model.num_heads % model.num_kv_heads:
        fail(
            f"{prefix}.num_kv_heads",
            model.num_kv_heads,
            f"must divide {prefix}.num_heads={model.num_heads}",
        )
    if head_dim(model) % 2:
        fail(
            f"{prefix}.num_heads",
            model.num_heads,
            f"gives an odd head_dim {head_dim(model)}; rotary embeddings need an even one",
        )
    if model.sliding_window < 0:
        fail(f"{prefix}.sliding_window", model.sliding_window, "must be >= 0 (0 disables it)")
    for key, allowed in (
        ("dtype", MODEL_DTYPES),
        ("param_dtype", MODEL_DTYPES),
        ("rope_scaling", ROPE_SCALINGS),
        ("remat", REMAT_POLICIES),
        ("attention", ATTENTION_IMPLEMENTATIONS),
        ("attention_score_dtype", ATTENTION_SCORE_DTYPES),
    ):
        if model[key] not in allowed:
            fail(f"{prefix}.{key}", model[key], f"must be one of {', '.join(allowed)}")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if not (is_int(model[key]) and -1 <= model[key] < model.vocab_size):
            fail(
                f"{prefix}.{key}",
                model[key],
                f"must lie in [0, {model.vocab_size}) (or be -1: none)",
            )
    _validate_rope_scaling(model, prefix)
    if model.architecture not in ARCHITECTURES:
        fail(
            f"{prefix}.architecture",
            model.architecture,
            f"must be one of {', '.join(ARCHITECTURES)}",
        )
    require_positive_int(f"{prefix}.attention_chunk", model.attention_chunk)
    if model.attention_score_dtype != "float32" and model.attention != "einsum":
        fail(
            f"{prefix}.attention_score_dtype",
            model.attention_score_dtype,
            f"is read by the einsum kernel only, not {prefix}.attention={model.attention!r}",
        )
    if model.architecture == "phi3small":
        _validate_small(model, prefix)


def _validate_small(model: ml_collections.ConfigDict, prefix: str) -> None:
    for key in (
        "blocksparse_block_size",
        "blocksparse_num_local_blocks",
        "blocksparse_vert_stride",
        "dense_attention_every_n_layers",
    ):
        value = model[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(f"{prefix}.{key}", value, "must be a positive integer")
    if model.num_layers % model.dense_attention_every_n_layers:
        fail(
            f"{prefix}.dense_attention_every_n_layers",
            model.dense_attention_every_n_layers,
            f"must divide {prefix}.num_layers={model.num_layers} (layers are scanned in groups)",
        )
    for key in ("layer_norm_eps", "gegelu_limit", "mup_attn_multiplier", "mup_width_multiplier"):
        if not model[key] > 0:
            fail(f"{prefix}.{key}", model[key], "must be positive")
    if not model.mup_embedding_multiplier >= 0:
        fail(
            f"{prefix}.mup_embedding_multiplier",
            model.mup_embedding_multiplier,
            "must be >= 0 (0 disables it)",
        )
    for key in ("embedding_dropout", "ffn_dropout"):
        if not 0 <= model[key] < 1:
            fail(f"{prefix}.{key}", model[key], "must lie in [0, 1)")
    if model.rope_scaling != "none":
        fail(f"{prefix}.rope_scaling", model.rope_scaling, "phi3small supports only none (8K)")
    if model.attention != "einsum":
        fail(f"{prefix}.attention", model.attention, "phi3small has its own kernels; use einsum")
    if model.attention_score_dtype != "float32":
        fail(
            f"{prefix}.attention_score_dtype",
            model.attention_score_dtype,
            "phi3small's kernels keep float32 scores",
        )
    bad = [
        i for i in model.dummy_token_ids if not (isinstance(i, int) and 0 <= i < model.vocab_size)
    ]
    if bad:
        fail(f"{prefix}.dummy_token_ids", bad[0], f"must lie in [0, {model.vocab_size})")


def _validate_rope_scaling(model: ml_collections.ConfigDict, prefix: str) -> None:
    # Without rope scaling the original length means nothing, so a larger one is a mistake.
    # LongRoPE defines it (short factors up to it, attention factor 1 when max <= original),
    # and transformers runs such a model, so it is allowed there.
    if (
        model.rope_scaling == "none"
        and model.original_max_position_embeddings > model.max_position_embeddings
    ):
        fail(
            f"{prefix}.original_max_position_embeddings",
            model.original_max_position_embeddings,
            f"exceeds {prefix}.max_position_embeddings={model.max_position_embeddings}",
        )
    want = head_dim(model) // 2
    for key in ("rope_short_factor", "rope_long_factor"):
        factors = tuple(model[key])
        if model.rope_scaling == "none":
            if factors:
                fail(f"{prefix}.{key}", f"<{len(factors)} values>", "set but rope_scaling is none")
            continue
        if len(factors) != want:
            fail(
                f"{prefix}.{key}",
                f"<{len(factors)} values>",
                f"needs head_dim // 2 = {want} values",
            )
        if any(not f > 0 for f in factors):
            fail(f"{prefix}.{key}", factors, "every factor must be positive")
