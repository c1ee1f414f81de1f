"""The training loop's sections: `checkpoint`, `log` and `eval`."""

from __future__ import annotations

import ml_collections

from phi3_jax.config.checks import fail, is_int, require_positive_int

# What a checkpoint save that fails (a full disk) does: stop the run, or go on without it.
ON_SAVE_ERROR = ("stop", "continue")


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
    # Extension training: init_from's params under this run's context and rotary keys
    # (max_position_embeddings, original_max_position_embeddings, rope_*, attention kernel;
    # phi3_jax.train.loop.CONTEXT_KEYS) instead of those saved with them.
    c.extend_context = False
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


def validate_loop(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming the first invalid checkpoint, log or eval key."""
    for key in ("checkpoint.every_steps", "checkpoint.max_to_keep", "log.every_steps"):
        section, name = key.split(".")
        require_positive_int(key, config[section][name])
    if config.checkpoint.on_save_error not in ON_SAVE_ERROR:
        fail(
            "checkpoint.on_save_error",
            config.checkpoint.on_save_error,
            f"must be one of {', '.join(ON_SAVE_ERROR)}",
        )
    if not is_int(config.eval.every_steps) or config.eval.every_steps < 0:
        fail("eval.every_steps", config.eval.every_steps, "must be an integer >= 0 (0: off)")
    if not config.log.peak_flops >= 0:
        fail("log.peak_flops", config.log.peak_flops, "must be >= 0 (0: table or probe)")
    require_positive_int("eval.task_limit", config.eval.task_limit)
    if config.eval.task_style not in ("lm_eval", "report"):
        fail("eval.task_style", config.eval.task_style, "must be lm_eval or report")
    if config.checkpoint.extend_context and not config.checkpoint.init_from:
        fail("checkpoint.extend_context", True, "extends a parent: set checkpoint.init_from")
    if config.eval.every_steps and not config.data.eval_fraction:
        fail("eval.every_steps", config.eval.every_steps, "needs data.eval_fraction > 0")
