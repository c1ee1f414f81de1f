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
    if train.on_nan not in ON_NAN:
        fail("train.on_nan", train.on_nan, f"must be one of {', '.join(ON_NAN)}")
    if train.objective not in OBJECTIVES:
        fail("train.objective", train.objective, f"must be one of {', '.join(OBJECTIVES)}")


def _validate_chunks(config: ml_collections.ConfigDict) -> None:
    train, model = config.train, config.model
    if not is_int(train.loss_chunk) or train.loss_chunk < 0:
        fail("train.loss_chunk", train.loss_chunk, "must be an integer >= 0 (0: off)")
    if train.loss_chunk and train.seq_len % train.loss_chunk:
        fail("train.loss_chunk", train.loss_chunk, f"must divide train.seq_len={train.seq_len}")
    if train.loss_chunk and model.architecture != "phi3":
        fail("train.loss_chunk", train.loss_chunk, "is implemented for architecture phi3 only")
    chunk = model.attention_chunk
    if model.attention == "chunked" and train.seq_len > chunk and train.seq_len % chunk:
        fail("model.attention_chunk", chunk, f"must divide train.seq_len={train.seq_len}")


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
