"""The `train` and `optim` sections: batch geometry, loss, objective; AdamW and its schedule."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail, is_int, require_positive_int

# What a non-finite loss or gradient norm does: stop the run, or skip that update.
ON_NAN = ("stop", "skip")
# What the run trains: next-token prediction on documents (pretraining), SFT on chat
# conversations, or DPO on preference pairs (phi3_jax.posttrain).
OBJECTIVES = ("lm", "sft", "dpo")
SCHEDULES = ("cosine", "wsd")
WEIGHT_DECAY_MASKS = ("all", "no_norms", "no_norms_no_embedding")
# How XLA:CPU hands the train step's dots to YNNPACK: its default fusions, or each dot alone
# (no elementwise work fused in, so no fused relayout of a gradient before its weight's dot).
CPU_DOT_FUSIONS = ("xla", "dots_only")


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
    # Progressive context (phi3_jax.data.long_context): (first step, row length) pairs, the first
    # at step 0, the last at train.seq_len, e.g. ((0, 4096), (1000, 32768), (2000, 131072));
    # empty: train.seq_len throughout. Each length compiles the step once.
    t.context_schedule = ()
    # On a CPU mesh, one of CPU_DOT_FUSIONS: dots_only steps the 134M bench model ~15% faster
    # (README, Performance); other platforms ignore it.
    t.cpu_dot_fusion = "dots_only"
    return t


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


def validate_train(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid train key."""
    train = config.train
    if not is_int(train.seed) or train.seed < 0:
        fail("train.seed", train.seed, "must be a non-negative integer")
    for key in ("steps", "global_batch_size", "seq_len", "microbatches"):
        require_positive_int(f"train.{key}", train[key])
    if train.seq_len > config.model.max_position_embeddings:
        fail(
            "train.seq_len",
            train.seq_len,
            f"exceeds model.max_position_embeddings={config.model.max_position_embeddings}",
        )
    if train.global_batch_size % train.microbatches:
        fail(
            "train.microbatches",
            train.microbatches,
            f"must divide train.global_batch_size={train.global_batch_size}",
        )
    if not train.z_loss >= 0:
        fail("train.z_loss", train.z_loss, "must be >= 0")
    _validate_chunks(config)
    if config.model.attention == "splash" and config.mesh.sequence != 1:
        fail(
            "model.attention",
            config.model.attention,
            "does not split the sequence: mesh.sequence must be 1 (chunked does)",
        )
    if train.cpu_dot_fusion not in CPU_DOT_FUSIONS:
        fail("train.cpu_dot_fusion", train.cpu_dot_fusion, f"must be one of {CPU_DOT_FUSIONS}")
    if train.on_nan not in ON_NAN:
        fail("train.on_nan", train.on_nan, f"must be one of {', '.join(ON_NAN)}")
    if train.objective not in OBJECTIVES:
        fail("train.objective", train.objective, f"must be one of {', '.join(OBJECTIVES)}")
    _validate_context(config)


def _validate_context(config: ml_collections.ConfigDict) -> None:
    """train.context_schedule and data.long_context (they read the model and train keys too)."""
    train, long = config.train, config.data.long_context
    schedule = [tuple(entry) for entry in train.context_schedule]
    key = "train.context_schedule"
    if schedule:
        if not all(len(e) == 2 and is_int(e[0]) and is_int(e[1]) for e in schedule):
            fail(key, schedule, "each entry must be a (first step, row length) pair of integers")
        starts, lengths = [e[0] for e in schedule], [e[1] for e in schedule]
        if starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:], strict=False)):
            fail(key, schedule, "first steps must start at 0 and rise")
        if lengths[-1] != train.seq_len or any(not 0 < n <= train.seq_len for n in lengths):
            fail(key, schedule, f"lengths must be positive, the last train.seq_len={train.seq_len}")
        if train.objective == "dpo":
            fail(key, schedule, "is for train.objective lm or sft (a DPO run has one row length)")
        for length in lengths[:-1]:
            _validate_chunks(config, length, f"{key} length {length}")
    if not is_int(long.min_tokens) or long.min_tokens < 0:
        fail("data.long_context.min_tokens", long.min_tokens, "must be an integer >= 0 (0: off)")
    if long.min_tokens:
        original = config.model.original_max_position_embeddings
        if long.min_tokens <= original:
            fail(
                "data.long_context.min_tokens",
                long.min_tokens,
                f"must exceed model.original_max_position_embeddings={original} (the short context)",
            )
        if not 0 < long.long_fraction < 1:
            fail("data.long_context.long_fraction", long.long_fraction, "must lie in (0, 1)")
        if config.data.packing != "first_fit":
            fail("data.packing", config.data.packing, "must be first_fit with data.long_context")
        if train.objective == "dpo":
            fail(
                "data.long_context.min_tokens", long.min_tokens, "is for train.objective lm or sft"
            )


def _validate_chunks(
    config: ml_collections.ConfigDict, seq_len: int | None = None, what: str = ""
) -> None:
    """The chunk keys against a row length: train.seq_len, or a schedule's `seq_len` (`what`)."""
    train, model = config.train, config.model
    seq_len = seq_len or train.seq_len
    what = what or f"train.seq_len={seq_len}"
    if not is_int(train.loss_chunk) or train.loss_chunk < 0:
        fail("train.loss_chunk", train.loss_chunk, "must be an integer >= 0 (0: off)")
    if train.loss_chunk and seq_len % train.loss_chunk:
        fail("train.loss_chunk", train.loss_chunk, f"must divide {what}")
    if train.loss_chunk and model.architecture != "phi3":
        fail("train.loss_chunk", train.loss_chunk, "is implemented for architecture phi3 only")
    chunk = model.attention_chunk
    if model.attention == "chunked" and seq_len > chunk and seq_len % chunk:
        fail("model.attention_chunk", chunk, f"must divide {what}")
    # Splash tiles a row in blocks of at least 128 tokens (model/splash.py, BLOCKS).
    if model.attention == "splash" and seq_len % 128:
        fail(
            "model.attention",
            model.attention,
            f"needs rows of a multiple of 128 tokens, not {what}",
        )


def validate_optim(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid optim key."""
    optim = config.optim
    for key in ("lr", "eps"):
        if not optim[key] > 0:
            fail(f"optim.{key}", optim[key], "must be positive")
    for key in ("b1", "b2"):
        if not 0 <= optim[key] < 1:
            fail(f"optim.{key}", optim[key], "must lie in [0, 1)")
    for key in ("weight_decay", "clip_norm"):
        if not optim[key] >= 0:
            fail(f"optim.{key}", optim[key], "must be >= 0 (0 disables it)")
    if not 0 <= optim.min_lr_ratio <= 1:
        fail("optim.min_lr_ratio", optim.min_lr_ratio, "must lie in [0, 1]")
    for key, allowed in (("schedule", SCHEDULES), ("weight_decay_mask", WEIGHT_DECAY_MASKS)):
        if optim[key] not in allowed:
            fail(f"optim.{key}", optim[key], f"must be one of {', '.join(allowed)}")
    for key in ("warmup_steps", "decay_steps"):
        if not is_int(optim[key]) or optim[key] < 0:
            fail(f"optim.{key}", optim[key], "must be a non-negative integer")
    schedule_steps = optim.warmup_steps + (optim.decay_steps if optim.schedule == "wsd" else 0)
    if schedule_steps > config.train.steps:
        fail(
            "optim.warmup_steps",
            optim.warmup_steps,
            f"warmup{' + decay_steps' if optim.schedule == 'wsd' else ''} = {schedule_steps} "
            f"exceeds train.steps={config.train.steps}",
        )
