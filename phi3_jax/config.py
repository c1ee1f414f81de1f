"""The configuration schema: defaults for every key, and validation with one-line errors.

A run's configuration is one `ml_collections.ConfigDict`. `default_config()` defines every key (the
schema: overriding a key that is not here is an error); `configs/*.py` fill in a model variant;
`validate()` checks the values once, before anything is built, and names the key at fault.
"""

from __future__ import annotations

import json

import ml_collections

MODEL_DTYPES = ("float32", "bfloat16", "float16")
ROPE_SCALINGS = ("none", "longrope")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# Attention kernels (phi3_jax.model.attention); one the backend cannot run falls back with a log line.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "splash", "chunked")
# phi3: mini/medium (RMSNorm, SwiGLU, untied); phi3small: Phi-3-small (LayerNorm, GEGELU, muP, blocksparse).
ARCHITECTURES = ("phi3", "phi3small")
# Shard formats of a data source (jsonl covers .jsonl, .jsonl.gz and .jsonl.zst).
DATA_FORMATS = ("jsonl", "parquet", "arrayrecord_text", "arrayrecord_tokens")
PACKINGS = ("first_fit", "concat_split")
ON_BAD_RECORD = ("raise", "skip")
# What a non-finite loss or gradient norm does: stop the run, or skip that update.
ON_NAN = ("stop", "skip")
# Tokenizer files (phi3_jax.data.tokenizer): a sentencepiece .model (ids as Hugging Face's
# conversion of it gives), a Hugging Face tokenizer directory, or tiktoken ranks (Phi-3-small).
TOKENIZER_KINDS = ("sentencepiece", "hf", "tiktoken")
# Keys that existed once: setting one is an error that says what replaced it.
REMOVED_KEYS = {
    "data.tokenizer_path": "removed; name the tokenizer with data.tokenizer.kind "
    f"({' | '.join(TOKENIZER_KINDS)}) and data.tokenizer.path",
}
# What the run trains: next-token prediction on documents (pretraining), SFT on chat
# conversations, or DPO on preference pairs (phi3_jax.posttrain).
OBJECTIVES = ("lm", "sft", "dpo")
# A conversation longer than a row (train.seq_len + 1 ids): dropped, or cut to the row (counted).
TOO_LONG = ("drop", "truncate")
# DPO losses: sigmoid (Rafailov et al. 2023; label_smoothing: cDPO), ipo (Azar et al. 2023), hinge.
DPO_LOSSES = ("sigmoid", "ipo", "hinge")
# What a checkpoint save that fails (a full disk) does: stop the run, or go on without it.
ON_SAVE_ERROR = ("stop", "continue")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


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
    # Rematerialisation of each block: none, full, dots (save all matmul outputs),
    # dots_no_batch (save matmuls without batch dimensions, i.e. the projections).
    m.remat = "none"
    # Attention kernel (phi3 only): einsum (plain), xla | cudnn (jax.nn.dot_product_attention),
    # splash (TPU Pallas), chunked (online softmax over key chunks, no [q, k] score matrix).
    m.attention = "einsum"
    # chunked: keys per chunk (must divide train.seq_len; a shorter sequence is one chunk).
    m.attention_chunk = 512
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


# The named variants of configs/base.py, and "hf" (a model read from a Hugging Face config).
VARIANTS = ("tiny", "mini", "mini_128k", "small", "small_tiny", "medium", "hf")
MESH_AXES = ("data", "fsdp", "sequence", "tensor")
SCHEDULES = ("cosine", "wsd")
WEIGHT_DECAY_MASKS = ("all", "no_norms", "no_norms_no_embedding")


def default_mesh_config() -> ml_collections.ConfigDict:
    """Device mesh axes (data, fsdp, sequence, tensor); the device count is their product."""
    m = ml_collections.ConfigDict()
    # Pure data parallelism within a slice: replicas of the (fsdp, tensor) sharded model; -1 = rest.
    m.data = 1
    # Fully sharded data parallelism within a slice: batch and the params' embed dim; -1 = rest.
    m.fsdp = -1
    # Sequence (context) parallelism: activations split along the sequence (rule length ->
    # sequence); attention gathers keys/values over it. For long context (mini-128k).
    m.sequence = 1
    # Tensor parallelism: heads, kv heads, mlp and vocab split over it; -1 = all remaining devices.
    m.tensor = 1
    # Cross-slice (DCN) factor of the data axis for multi-slice TPU; total data = dcn_data * data.
    m.dcn_data = 1
    # Cross-slice (DCN) factor of the fsdp axis; total fsdp = dcn_fsdp * fsdp.
    m.dcn_fsdp = 1
    return m


def default_sharding_config() -> ml_collections.ConfigDict:
    """Logical axis rules: the model's logical axis names mapped onto mesh axes."""
    s = ml_collections.ConfigDict()
    # (logical name, mesh axis | tuple of mesh axes | None) pairs, first free match wins (flax
    # semantics). Every logical name a parameter uses must appear; None replicates explicitly.
    s.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("length", "sequence"),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("head_dim", None),
        ("mlp", "tensor"),
        ("layers", None),
    )
    return s


def default_train_config() -> ml_collections.ConfigDict:
    """The train step: batch geometry, accumulation, loss."""
    t = ml_collections.ConfigDict()
    # Seed of parameter initialisation and of the state's rng.
    t.seed = 0
    # Optimizer steps of the run (the cosine schedule decays over all of them).
    t.steps = 1000
    # Sequences per optimizer step, over all processes and microbatches.
    t.global_batch_size = 8
    # Tokens per sequence.
    t.seq_len = 256
    # Gradient accumulation: the global batch is split into this many sequential microbatches.
    t.microbatches = 1
    # Coefficient of the z-loss, mean of logsumexp(logits)^2 over real tokens (PaLM: 1e-4); 0 off.
    t.z_loss = 0.0
    # Cross-entropy over sequence chunks of this many positions (phi3 only; must divide seq_len),
    # so only one chunk's fp32 logits exist at a time; 0 computes all logits at once.
    t.loss_chunk = 0
    # A NaN/inf loss or grad norm: "stop" (report its step, exit) or "skip" (keep the old params).
    t.on_nan = "stop"
    # One of OBJECTIVES: lm (pretraining), sft or dpo (configs/phi3_sft.py, configs/phi3_dpo.py).
    t.objective = "lm"
    return t


def default_sft_config() -> ml_collections.ConfigDict:
    """Supervised fine-tuning on {"messages": [...]} records in Phi-3's chat format."""
    s = ml_collections.ConfigDict()
    # The record field holding the conversation (a list of {"role", "content"}).
    s.messages_field = "messages"
    # Also train on each assistant message's "<|assistant|>\n" header (default: content + <|end|>).
    s.train_header = False
    # Also train on the <|endoftext|> that ends each conversation.
    s.train_eos = False
    # One of TOO_LONG: a conversation longer than a row is dropped or truncated; both are counted.
    s.too_long = "drop"
    return s


def default_dpo_config() -> ml_collections.ConfigDict:
    """Direct preference optimisation on {"prompt", "chosen", "rejected"} records."""
    d = ml_collections.ConfigDict()
    # Strength of the KL tie to the reference (beta; IPO's tau).
    d.beta = 0.1
    # One of DPO_LOSSES.
    d.loss = "sigmoid"
    # sigmoid only: the assumed probability that a pair's preference is flipped (cDPO).
    d.label_smoothing = 0.0
    # Reference log-probs from one pass over the data before training instead of a frozen copy
    # of the params beside the policy (saves the reference's memory).
    d.precompute_reference = False
    return d


def default_optim_config() -> ml_collections.ConfigDict:
    """AdamW, gradient clipping and the learning-rate schedule."""
    o = ml_collections.ConfigDict()
    # Peak learning rate.
    o.lr = 3e-4
    # Adam's first- and second-moment decay rates.
    o.b1 = 0.9
    o.b2 = 0.95
    # Adam's denominator epsilon.
    o.eps = 1e-8
    # Decoupled weight decay (AdamW), multiplied by the learning rate.
    o.weight_decay = 0.1
    # Which params decay: all | no_norms (norm scales and biases skipped) | no_norms_no_embedding.
    o.weight_decay_mask = "no_norms"
    # Clip gradients to this global L2 norm before Adam; 0 disables clipping.
    o.clip_norm = 1.0
    # cosine: warmup then cosine decay to min_lr over train.steps; wsd: warmup-stable-decay.
    o.schedule = "cosine"
    # Linear warmup from 0 to lr over this many steps.
    o.warmup_steps = 100
    # WSD only: the final linear decay to min_lr lasts this many steps.
    o.decay_steps = 100
    # The learning rate at the end of the decay, as a fraction of lr.
    o.min_lr_ratio = 0.1
    return o


def _data_source(globs: str, fmt: str = "jsonl") -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    # Comma-separated globs (or paths) of the source's shards.
    s.globs = globs
    # One of DATA_FORMATS.
    s.format = fmt
    # JSON field / parquet column holding the document text (unused for arrayrecord_*).
    s.text_field = "text"
    return s


def default_data_config() -> ml_collections.ConfigDict:
    """The input pipeline: sources, the two mixing phases, packing, workers, bad input, eval."""
    d = ml_collections.ConfigDict()
    d.tokenizer = ml_collections.ConfigDict()
    # One of TOKENIZER_KINDS: sentencepiece (a .model; Phi-3's specials added after its pieces),
    # hf (a Hugging Face tokenizer directory or tokenizer.json), tiktoken (a ranks file).
    d.tokenizer.kind = "sentencepiece"
    # Its file or directory; sentencepiece reads the tokenizer.json beside the .model if there.
    d.tokenizer.path = "data/tokenizer.model"
    # Named sources, as written by phi3_jax.data.prepare (web) and phi3_jax.data.synthetic.
    d.sources = ml_collections.ConfigDict(
        {
            "web": _data_source("data/web/phase1/*.jsonl.zst"),
            "web_strict": _data_source("data/web/phase2/*.jsonl.zst"),
            "synthetic": _data_source("data/synthetic/*.jsonl.zst"),
        }
    )
    # Phase 1 mixture, source name -> weight (Phi-3: mostly web).
    d.phase1 = ml_collections.ConfigDict({"web": 1.0})
    # Phase 2 mixture (Phi-3: the stricter web subset plus synthetic); empty for one phase.
    d.phase2 = ml_collections.ConfigDict({"web_strict": 0.6, "synthetic": 0.4})
    # Index of the first batch (train step, counted from 0) drawn from phase 2.
    d.phase2_start_step = 800
    # first_fit (grain's first-fit bins, padded) or concat_split (no padding, splits documents).
    d.packing = "first_fit"
    # First-fit: rows packed at once (more: less padding, documents reordered further).
    d.packing_bins = 16
    # grain worker processes per phase (0: everything in the training process, for debugging).
    d.num_workers = 2
    # Batches buffered per worker.
    d.prefetch = 2
    # raise: a bad shard/record is an error naming file and record; skip: dropped and counted.
    d.on_bad_record = "raise"
    # Fraction of each source held out for evaluation, chosen by document hash.
    d.eval_fraction = 0.01
    # Batches per evaluation of each source (the same held-out batches every time).
    d.eval_batches = 4
    # Seeds the per-epoch shard order and first-fit's row order.
    d.seed = 0
    # Start each document with BOS (it always ends with EOS).
    d.add_bos = True
    return d


def default_checkpoint_config() -> ml_collections.ConfigDict:
    """Orbax checkpoints of the train state, data iterator and config in WORKDIR/checkpoints."""
    c = ml_collections.ConfigDict()
    # Save every this many steps (and always at the last step and on SIGTERM/SIGINT).
    c.every_steps = 500
    # Checkpoints kept on disk (the oldest are deleted); at least 2 for the corruption fallback.
    c.max_to_keep = 3
    # Write in a background thread while training goes on.
    c.async_save = True
    # A failed save (disk full): "stop" (one line, exit) or "continue" (one line, train on; the
    # checkpoints saved before are kept either way).
    c.on_save_error = "stop"
    # What a fresh run starts from: a params checkpoint (`convert hf-to-orbax`) or a run's
    # checkpoint (WORKDIR: its latest step; WORKDIR/checkpoints/STEP); "" = random init.
    c.init_from = ""
    return c


def default_log_config() -> ml_collections.ConfigDict:
    """Progress lines, TensorBoard events and metrics.jsonl."""
    lg = ml_collections.ConfigDict()
    # Log train metrics every this many steps.
    lg.every_steps = 10
    # Peak FLOP/s of all devices together for MFU; 0 = the device table, or a matmul probe on CPU.
    lg.peak_flops = 0.0
    return lg


def default_eval_config() -> ml_collections.ConfigDict:
    """Held-out evaluation (data.eval_batches batches per source)."""
    e = ml_collections.ConfigDict()
    # Evaluate every this many steps (and at step 0 and the last step); 0 disables evaluation.
    e.every_steps = 100
    # Benchmarks scored at each evaluation too (comma-separated phi3_jax.eval task names, e.g.
    # "arc_easy,copa,mmlu"; empty: none), on the first task_limit documents of each, in the
    # task_style prompts ("lm_eval" | "report").
    e.tasks = ""
    e.task_limit = 100
    e.task_style = "lm_eval"
    return e


def default_config() -> ml_collections.ConfigDict:
    """Every key a run may set, with its default."""
    config = ml_collections.ConfigDict()
    # Which named variant of configs/ this came from (one of VARIANTS).
    config.variant = "tiny"
    config.model = default_model_config()
    config.data = default_data_config()
    config.mesh = default_mesh_config()
    config.sharding = default_sharding_config()
    config.train = default_train_config()
    config.optim = default_optim_config()
    config.sft = default_sft_config()
    config.dpo = default_dpo_config()
    config.checkpoint = default_checkpoint_config()
    config.log = default_log_config()
    config.eval = default_eval_config()
    return config


def head_dim(model: ml_collections.ConfigDict) -> int:
    """Per-head width, hidden_size // num_heads (Phi-3 has no separate head_dim key)."""
    return model.hidden_size // model.num_heads


def _fail(key: str, value, why: str) -> None:
    raise ConfigError(f"{key}={value!r}: {why}")


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
            _fail(f"{prefix}.{key}", value, "must be a positive integer")
    if model.rope_attention_factor < 0:
        _fail(f"{prefix}.rope_attention_factor", model.rope_attention_factor, "must be >= 0")
    for key in ("rope_theta", "rms_norm_eps", "initializer_range"):
        if not model[key] > 0:
            _fail(f"{prefix}.{key}", model[key], "must be positive")
    if model.hidden_size % model.num_heads:
        _fail(
            f"{prefix}.num_heads",
            model.num_heads,
            f"must divide {prefix}.hidden_size={model.hidden_size}",
        )
    if model.num_heads % model.num_kv_heads:
        _fail(
            f"{prefix}.num_kv_heads",
            model.num_kv_heads,
            f"must divide {prefix}.num_heads={model.num_heads}",
        )
    if head_dim(model) % 2:
        _fail(
            f"{prefix}.num_heads",
            model.num_heads,
            f"gives an odd head_dim {head_dim(model)}; rotary embeddings need an even one",
        )
    if model.sliding_window < 0:
        _fail(f"{prefix}.sliding_window", model.sliding_window, "must be >= 0 (0 disables it)")
    for key, allowed in (
        ("dtype", MODEL_DTYPES),
        ("param_dtype", MODEL_DTYPES),
        ("rope_scaling", ROPE_SCALINGS),
        ("remat", REMAT_POLICIES),
        ("attention", ATTENTION_IMPLEMENTATIONS),
    ):
        if model[key] not in allowed:
            _fail(f"{prefix}.{key}", model[key], f"must be one of {', '.join(allowed)}")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if not (_is_int(model[key]) and -1 <= model[key] < model.vocab_size):
            _fail(
                f"{prefix}.{key}",
                model[key],
                f"must lie in [0, {model.vocab_size}) (or be -1: none)",
            )
    _validate_rope_scaling(model, prefix)
    if model.architecture not in ARCHITECTURES:
        _fail(
            f"{prefix}.architecture",
            model.architecture,
            f"must be one of {', '.join(ARCHITECTURES)}",
        )
    _require_positive_int(f"{prefix}.attention_chunk", model.attention_chunk)
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
            _fail(f"{prefix}.{key}", value, "must be a positive integer")
    if model.num_layers % model.dense_attention_every_n_layers:
        _fail(
            f"{prefix}.dense_attention_every_n_layers",
            model.dense_attention_every_n_layers,
            f"must divide {prefix}.num_layers={model.num_layers} (layers are scanned in groups)",
        )
    for key in ("layer_norm_eps", "gegelu_limit", "mup_attn_multiplier", "mup_width_multiplier"):
        if not model[key] > 0:
            _fail(f"{prefix}.{key}", model[key], "must be positive")
    if not model.mup_embedding_multiplier >= 0:
        _fail(
            f"{prefix}.mup_embedding_multiplier",
            model.mup_embedding_multiplier,
            "must be >= 0 (0 disables it)",
        )
    for key in ("embedding_dropout", "ffn_dropout"):
        if not 0 <= model[key] < 1:
            _fail(f"{prefix}.{key}", model[key], "must lie in [0, 1)")
    if model.rope_scaling != "none":
        _fail(f"{prefix}.rope_scaling", model.rope_scaling, "phi3small supports only none (8K)")
    if model.attention != "einsum":
        _fail(f"{prefix}.attention", model.attention, "phi3small has its own kernels; use einsum")
    bad = [
        i for i in model.dummy_token_ids if not (isinstance(i, int) and 0 <= i < model.vocab_size)
    ]
    if bad:
        _fail(f"{prefix}.dummy_token_ids", bad[0], f"must lie in [0, {model.vocab_size})")


def _validate_rope_scaling(model: ml_collections.ConfigDict, prefix: str) -> None:
    # Without rope scaling the original length means nothing, so a larger one is a mistake.
    # LongRoPE defines it (short factors up to it, attention factor 1 when max <= original),
    # and transformers runs such a model, so it is allowed there.
    if (
        model.rope_scaling == "none"
        and model.original_max_position_embeddings > model.max_position_embeddings
    ):
        _fail(
            f"{prefix}.original_max_position_embeddings",
            model.original_max_position_embeddings,
            f"exceeds {prefix}.max_position_embeddings={model.max_position_embeddings}",
        )
    want = head_dim(model) // 2
    for key in ("rope_short_factor", "rope_long_factor"):
        factors = tuple(model[key])
        if model.rope_scaling == "none":
            if factors:
                _fail(f"{prefix}.{key}", f"<{len(factors)} values>", "set but rope_scaling is none")
            continue
        if len(factors) != want:
            _fail(
                f"{prefix}.{key}",
                f"<{len(factors)} values>",
                f"needs head_dim // 2 = {want} values",
            )
        if any(not f > 0 for f in factors):
            _fail(f"{prefix}.{key}", factors, "every factor must be positive")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive_int(key: str, value) -> None:
    if not _is_int(value) or value <= 0:
        _fail(key, value, "must be a positive integer")


def validate_mesh(mesh: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid mesh key (device counts are checked later)."""
    for axis in MESH_AXES:
        value = mesh[axis]
        if not _is_int(value) or not (value > 0 or value == -1):
            _fail(f"mesh.{axis}", value, "must be a positive integer or -1 (remaining devices)")
    if sum(mesh[axis] == -1 for axis in MESH_AXES) > 1:
        _fail("mesh", {a: mesh[a] for a in MESH_AXES}, "at most one axis may be -1")
    for key in ("dcn_data", "dcn_fsdp"):
        _require_positive_int(f"mesh.{key}", mesh[key])


def rule_mesh_axes(mesh_axes) -> tuple[str, ...]:
    """A rule's mesh axes as a tuple: None -> (), "fsdp" -> ("fsdp",), lists -> tuples."""
    if mesh_axes is None:
        return ()
    if isinstance(mesh_axes, str):
        return (mesh_axes,)
    return tuple(mesh_axes)


def validate_sharding(sharding: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first malformed logical axis rule."""
    key = "sharding.logical_axis_rules"
    for rule in sharding.logical_axis_rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            _fail(key, rule, "each rule must be a (logical name, mesh axes) pair")
        axes = rule_mesh_axes(rule[1])
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            _fail(key, rule, f"unknown mesh axis {unknown[0]!r}; mesh axes are {MESH_AXES}")
        if len(set(axes)) != len(axes):
            _fail(key, rule, "a mesh axis appears twice in one rule")


def validate_train(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid train key."""
    train = config.train
    if not _is_int(train.seed) or train.seed < 0:
        _fail("train.seed", train.seed, "must be a non-negative integer")
    for key in ("steps", "global_batch_size", "seq_len", "microbatches"):
        _require_positive_int(f"train.{key}", train[key])
    if train.seq_len > config.model.max_position_embeddings:
        _fail(
            "train.seq_len",
            train.seq_len,
            f"exceeds model.max_position_embeddings={config.model.max_position_embeddings}",
        )
    if train.global_batch_size % train.microbatches:
        _fail(
            "train.microbatches",
            train.microbatches,
            f"must divide train.global_batch_size={train.global_batch_size}",
        )
    if not train.z_loss >= 0:
        _fail("train.z_loss", train.z_loss, "must be >= 0")
    _validate_chunks(config)
    if train.on_nan not in ON_NAN:
        _fail("train.on_nan", train.on_nan, f"must be one of {', '.join(ON_NAN)}")
    if train.objective not in OBJECTIVES:
        _fail("train.objective", train.objective, f"must be one of {', '.join(OBJECTIVES)}")


def validate_posttrain(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid sft or dpo key."""
    sft, dpo = config.sft, config.dpo
    if not sft.messages_field:
        _fail("sft.messages_field", sft.messages_field, "must be non-empty")
    if sft.too_long not in TOO_LONG:
        _fail("sft.too_long", sft.too_long, f"must be one of {', '.join(TOO_LONG)}")
    if not dpo.beta > 0:
        _fail("dpo.beta", dpo.beta, "must be positive")
    if dpo.loss not in DPO_LOSSES:
        _fail("dpo.loss", dpo.loss, f"must be one of {', '.join(DPO_LOSSES)}")
    if not 0 <= dpo.label_smoothing < 0.5:
        _fail("dpo.label_smoothing", dpo.label_smoothing, "must lie in [0, 0.5)")
    if config.train.objective == "dpo" and config.data.phase2:
        _fail("data.phase2", dict(config.data.phase2), "a DPO run has one phase: leave it empty")
    if dpo.precompute_reference:
        _fail("dpo.precompute_reference", True, "not implemented yet (the reference is in memory)")
    if dpo.label_smoothing and dpo.loss != "sigmoid":
        _fail("dpo.label_smoothing", dpo.label_smoothing, "applies to dpo.loss=sigmoid only")


def _validate_chunks(config: ml_collections.ConfigDict) -> None:
    train, model = config.train, config.model
    if not _is_int(train.loss_chunk) or train.loss_chunk < 0:
        _fail("train.loss_chunk", train.loss_chunk, "must be an integer >= 0 (0: off)")
    if train.loss_chunk and train.seq_len % train.loss_chunk:
        _fail("train.loss_chunk", train.loss_chunk, f"must divide train.seq_len={train.seq_len}")
    if train.loss_chunk and model.architecture != "phi3":
        _fail("train.loss_chunk", train.loss_chunk, "is implemented for architecture phi3 only")
    chunk = model.attention_chunk
    if model.attention == "chunked" and train.seq_len > chunk and train.seq_len % chunk:
        _fail("model.attention_chunk", chunk, f"must divide train.seq_len={train.seq_len}")


def validate_optim(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid optim key."""
    optim = config.optim
    for key in ("lr", "eps"):
        if not optim[key] > 0:
            _fail(f"optim.{key}", optim[key], "must be positive")
    for key in ("b1", "b2"):
        if not 0 <= optim[key] < 1:
            _fail(f"optim.{key}", optim[key], "must lie in [0, 1)")
    for key in ("weight_decay", "clip_norm"):
        if not optim[key] >= 0:
            _fail(f"optim.{key}", optim[key], "must be >= 0 (0 disables it)")
    if not 0 <= optim.min_lr_ratio <= 1:
        _fail("optim.min_lr_ratio", optim.min_lr_ratio, "must lie in [0, 1]")
    for key, allowed in (("schedule", SCHEDULES), ("weight_decay_mask", WEIGHT_DECAY_MASKS)):
        if optim[key] not in allowed:
            _fail(f"optim.{key}", optim[key], f"must be one of {', '.join(allowed)}")
    for key in ("warmup_steps", "decay_steps"):
        if not _is_int(optim[key]) or optim[key] < 0:
            _fail(f"optim.{key}", optim[key], "must be a non-negative integer")
    schedule_steps = optim.warmup_steps + (optim.decay_steps if optim.schedule == "wsd" else 0)
    if schedule_steps > config.train.steps:
        _fail(
            "optim.warmup_steps",
            optim.warmup_steps,
            f"warmup{' + decay_steps' if optim.schedule == 'wsd' else ''} = {schedule_steps} "
            f"exceeds train.steps={config.train.steps}",
        )


def _validate_mixture(data: ml_collections.ConfigDict, phase: str) -> None:
    for name, weight in data[phase].items():
        if name not in data.sources:
            _fail(f"data.{phase}.{name}", weight, "no such source in data.sources")
        if not (isinstance(weight, int | float) and weight > 0):
            _fail(f"data.{phase}.{name}", weight, "a mixing weight must be positive")


def validate_data(data: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid data key."""
    if data.tokenizer.kind not in TOKENIZER_KINDS:
        _fail("data.tokenizer.kind", data.tokenizer.kind, f"must be one of {TOKENIZER_KINDS}")
    if not data.tokenizer.path:
        _fail("data.tokenizer.path", data.tokenizer.path, "must name the tokenizer's file")
    for name, source in data.sources.items():
        if not [g for g in source.globs.split(",") if g]:
            _fail(f"data.sources.{name}.globs", source.globs, "needs at least one glob")
        if source.format not in DATA_FORMATS:
            _fail(f"data.sources.{name}.format", source.format, f"must be one of {DATA_FORMATS}")
        if not source.text_field:
            _fail(f"data.sources.{name}.text_field", source.text_field, "must be non-empty")
    if not data.phase1:
        _fail("data.phase1", dict(data.phase1), "phase 1 needs at least one source")
    _validate_mixture(data, "phase1")
    _validate_mixture(data, "phase2")
    for key, low in (
        ("phase2_start_step", 0),
        ("packing_bins", 1),
        ("num_workers", 0),
        ("prefetch", 1),
        ("eval_batches", 1),
    ):
        if not isinstance(data[key], int) or data[key] < low:
            _fail(f"data.{key}", data[key], f"must be an integer >= {low}")
    if data.packing not in PACKINGS:
        _fail("data.packing", data.packing, f"must be one of {PACKINGS}")
    if data.on_bad_record not in ON_BAD_RECORD:
        _fail("data.on_bad_record", data.on_bad_record, f"must be one of {ON_BAD_RECORD}")
    if not 0 <= data.eval_fraction < 1:
        _fail("data.eval_fraction", data.eval_fraction, "must lie in [0, 1)")


def validate_loop(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid checkpoint, log or eval key."""
    for key in ("checkpoint.every_steps", "checkpoint.max_to_keep", "log.every_steps"):
        section, name = key.split(".")
        _require_positive_int(key, config[section][name])
    if config.checkpoint.on_save_error not in ON_SAVE_ERROR:
        _fail(
            "checkpoint.on_save_error",
            config.checkpoint.on_save_error,
            f"must be one of {', '.join(ON_SAVE_ERROR)}",
        )
    if not _is_int(config.eval.every_steps) or config.eval.every_steps < 0:
        _fail("eval.every_steps", config.eval.every_steps, "must be an integer >= 0 (0: off)")
    if not config.log.peak_flops >= 0:
        _fail("log.peak_flops", config.log.peak_flops, "must be >= 0 (0: table or probe)")
    _require_positive_int("eval.task_limit", config.eval.task_limit)
    if config.eval.task_style not in ("lm_eval", "report"):
        _fail("eval.task_style", config.eval.task_style, "must be lm_eval or report")
    if config.eval.every_steps and not config.data.eval_fraction:
        _fail("eval.every_steps", config.eval.every_steps, "needs data.eval_fraction > 0")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate a whole run configuration; returns it for chaining."""
    if config.variant not in VARIANTS:
        _fail("variant", config.variant, f"unknown; expected one of {', '.join(VARIANTS)}")
    validate_model(config.model)
    validate_data(config.data)
    validate_mesh(config.mesh)
    validate_sharding(config.sharding)
    validate_train(config)
    validate_posttrain(config)
    validate_optim(config)
    validate_loop(config)
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved configuration as JSON (saved beside checkpoints)."""
    return config.to_json(indent=2, sort_keys=True)


# Maps whose keys are names a run chooses (its sources), not schema keys: taken as saved.
NAMED_MAPS = ("data.sources", "data.phase1", "data.phase2")


def _merge(target: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in REMOVED_KEYS:
            raise ConfigError(f"{name}={value!r}: {REMOVED_KEYS[name]}")
        if key not in target:
            raise ConfigError(f"{name}={value!r}: unknown key")
        if name in NAMED_MAPS:
            target[key] = ml_collections.ConfigDict(value)
        elif isinstance(target[key], ml_collections.ConfigDict):
            _merge(target[key], value, f"{name}.")
        elif isinstance(target[key], tuple):
            target[key] = tuple(value)  # JSON has no tuples
        else:
            target[key] = value


def from_json(text: str) -> ml_collections.ConfigDict:
    """A configuration saved by `to_json`, on top of today's defaults, validated."""
    config = default_config()
    _merge(config, json.loads(text), "")
    return validate(config)
