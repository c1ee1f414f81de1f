"""The training loop: data → sharded train step → metrics, evaluation and checkpoints.

`train(config, workdir)` resumes from the newest complete checkpoint in WORKDIR/checkpoints (or
starts from `checkpoint.init_from`'s params, or from a random init), then runs to `train.steps`:
every step is checked for a non-finite loss, grad norm or updated state (`train.on_nan`), so a
non-finite state is never saved; every `log.every_steps` the metrics are written (metrics.py),
every `eval.every_steps` the held-out loss is measured, every `checkpoint.every_steps` the state,
the data iterator and the config are saved in the background. The last step, SIGTERM and SIGINT
save too; pending saves are waited for before it returns. A save that fails (a full disk) is
reported in one line at the step it is found, naming the directory and its free space, and stops
the run or not (`checkpoint.on_save_error`). The batch order is a function of the data
iterator's state alone, so a resumed run computes bitwise what the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections

from phi3_jax import checkpoint, metrics, model, paths, sharding
from phi3_jax import config as config_lib
from phi3_jax.checkpoint import params as params_checkpoint
from phi3_jax.data import long_context, pipeline
from phi3_jax.data.tokenizer import load_tokenizer
from phi3_jax.eval import in_loop
from phi3_jax.posttrain import objective
from phi3_jax.train import restore as restore_lib
from phi3_jax.train import state as state_lib

Log = Callable[[str], None]

# Model keys a run keeps when it starts from a params checkpoint (how to compute, not what).
COMPUTE_KEYS = ("name", "dtype", "remat", "scan_layers")
# Model keys of the context a run keeps too with checkpoint.extend_context (extension training:
# the parent's params under the long rotary factors and the new context; no parameter shape
# depends on them).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "original_max_position_embeddings",
    "rope_scaling",
    "rope_short_factor",
    "rope_long_factor",
    "rope_attention_factor",
    "attention",
    "attention_chunk",
)


class WorkdirError(OSError):
    """The workdir cannot be used; the message names it."""


class NonFiniteError(RuntimeError):
    """A NaN or inf loss or gradient norm under train.on_nan=stop; the message names the step."""


def prepare_workdir(workdir: str) -> str:
    """The workdir as an absolute path or a bucket URL, created and checked writable (one clear
    error naming it if not)."""
    try:
        checkpoint.orbax_path(workdir)
        paths.check_writable(workdir)
    except (OSError, ValueError) as error:
        raise WorkdirError(f"--workdir={error}") from None
    return paths.resolve(workdir)


def with_init_model(config: ml_collections.FrozenConfigDict) -> ml_collections.FrozenConfigDict:
    """With checkpoint.init_from: the config whose model is the params checkpoint's (the run's
    compute settings kept), so a converted Hugging Face model trains as it was saved; with
    checkpoint.extend_context the run's context and rotary keys are kept too (CONTEXT_KEYS)."""
    if not config.checkpoint.init_from:
        return config
    saved = params_checkpoint.init_config(config.checkpoint.init_from).model.to_dict()
    kept = COMPUTE_KEYS + (CONTEXT_KEYS if config.checkpoint.extend_context else ())
    return config_lib.replace(config, model=saved | {key: config.model[key] for key in kept})


def _check_vocab(config: ml_collections.ConfigDict, tokenizer) -> None:
    """The model has a row for every id of the tokenizer, and masks none it can produce."""
    spec = f"data.tokenizer={config.data.tokenizer.kind}:{config.data.tokenizer.path}"
    if tokenizer.vocab_size > config.model.vocab_size:
        raise config_lib.ConfigError(
            f"model.vocab_size={config.model.vocab_size}: smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids ({spec})"
        )
    produced = tokenizer.decodable_mask(config.model.vocab_size)
    masked = [i for i in config.model.dummy_token_ids if produced[i]]
    if masked:
        raise config_lib.ConfigError(
            f"model.dummy_token_ids: {masked[0]} is masked in the model but a token of the "
            f"tokenizer ({spec})"
        )


def _initial_state(config, mesh, manager, iterator, fingerprint: str, log: Log):
    """(state, step) from the latest checkpoint, else init_from's params, else a random init."""
    restored = checkpoint.restore_latest(
        manager, state_lib.abstract_state(config, mesh), iterator, config, fingerprint, log
    )
    if restored is not None:
        state, step = restored
        log(f"resuming from step {step} (checkpoint {manager.directory / str(step)})")
        return state, step
    if config.checkpoint.init_from:
        params = restore_lib.restore_sharded_params(config.checkpoint.init_from, config, mesh)
        log(f"starting from the params checkpoint {config.checkpoint.init_from}")
        return state_lib.state_from_params(config, mesh, params), 0
    log(f"starting from a random init (train.seed={config.train.seed})")
    return state_lib.init_state(config, mesh), 0


def _eval_batches(config, tokenizer, batch_sharding) -> dict[str, list]:
    """Per source, its held-out batches as global arrays, built once. Every process reads the
    same held-out rows (`objective.eval_datasets`) and feeds its own of them, so the held-out
    loss of a checkpoint does not depend on the process count."""
    size = config.train.global_batch_size
    rows = sharding.process_rows(batch_sharding, size)
    return {
        name: [
            sharding.global_batch({k: v[rows] for k, v in b.items()}, batch_sharding, size)
            for b in dataset
        ]
        for name, dataset in objective.eval_datasets(config, tokenizer).items()
    }


def evaluate(eval_step, params, batches: dict[str, list]) -> dict[str, float]:
    """Token-weighted held-out loss per source and overall, and the overall perplexity."""
    out, loss_sum, token_sum = {}, 0.0, 0.0
    for name, source_batches in batches.items():
        results = jax.device_get([eval_step(params, b) for b in source_batches])
        tokens = sum(float(r["tokens"]) for r in results)
        source_loss = sum(float(r["loss"]) * float(r["tokens"]) for r in results)
        out[f"eval_loss/{name}"] = source_loss / max(tokens, 1.0)
        loss_sum, token_sum = loss_sum + source_loss, token_sum + tokens
    out["eval_loss"] = loss_sum / max(token_sum, 1.0)
    out["eval_perplexity"] = math.exp(min(out["eval_loss"], 80.0))
    return out


def _data_counters(iterator) -> dict[str, float]:
    return {
        f"data/{source}/{name}": float(value)
        for source, counts in pipeline.source_counters(iterator).items()
        for name, value in counts.items()
    }


@contextlib.contextmanager
def _stop_signals() -> Iterator[list[int]]:
    """Records SIGTERM/SIGINT (preemption, Ctrl-C) instead of dying, so the loop can save."""
    received: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, _: received.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield received
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _at_length(config: ml_collections.ConfigDict, step: int) -> ml_collections.ConfigDict:
    """The config as train step `step` (from 0) runs it: train.seq_len is its scheduled length."""
    schedule, seq_len = config.train.context_schedule, config.train.seq_len
    length = long_context.context_length_at(schedule, seq_len, step)
    if length == seq_len:
        return config
    # A view for this step's FLOPs and tokens, not a run's config: the schedule's last length is
    # train.seq_len by validation, so it is frozen without being validated again.
    scheduled = ml_collections.ConfigDict(config.to_dict())
    scheduled.train.seq_len = length
    return ml_collections.FrozenConfigDict(scheduled)


def _tokens_seen(config: ml_collections.ConfigDict, steps: int) -> float:
    rows = objective.tokens_per_step(config) // config.train.seq_len
    return float(
        long_context.tokens_through(
            config.train.context_schedule, config.train.seq_len, rows, steps
        )
    )


def _check_finite(config, step: int, scalars: dict[str, float], log: Log) -> None:
    loss, grad_norm = scalars["loss"], scalars["grad_norm"]
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        what = f"non-finite loss={loss} grad_norm={grad_norm} at step {step}"
    elif not scalars["state_finite"]:
        what = f"non-finite params or optimizer state after the update of step {step}"
    else:
        return
    if config.train.on_nan == "skip":
        log(f"{what}: update skipped (train.on_nan=skip)")
        return
    raise NonFiniteError(
        f"{what}: stopping (train.on_nan=stop; 'skip' drops such updates); its state is not "
        "saved, resume starts from the last checkpoint"
    )


def _save_failed(config, error: checkpoint.SaveError, log: Log) -> None:
    if config.checkpoint.on_save_error == "stop":
        raise checkpoint.SaveError(
            f"{error}; stopping (checkpoint.on_save_error=stop; 'continue' trains on without it)"
        )
    log(f"{error}; training goes on (checkpoint.on_save_error=continue)")


def _save(config, manager, step: int, state, iterator, fingerprint: str, log: Log) -> None:
    """Start saving `step`; a save that fails to start is reported by `_save_failed`."""
    try:
        checkpoint.save(manager, step, state, iterator, config, fingerprint)
    except OSError as error:
        _save_failed(config, checkpoint.save_error(manager, step, error), log)


def _check_save(config, manager, step: int | None, log: Log, wait: bool = False) -> None:
    """Report the background save of `step` if it has failed (at once, not at the next save)."""
    error = checkpoint.finished_save_failed(manager, wait) if step is not None else None
    if error is not None:
        _save_failed(config, checkpoint.save_error(manager, step, error), log)


def train(config: ml_collections.ConfigDict, workdir: str, log: Log = print) -> dict[str, float]:
    """Train to config.train.steps in `workdir`, resuming if it holds checkpoints.

    Returns the last logged train scalars merged with the last evaluation's.
    """
    config = with_init_model(config_lib.freeze(config))
    config_lib.require_training_data(config.data)
    primary = jax.process_index() == 0
    log = log if primary else (lambda _: None)
    mesh = sharding.make_mesh(config.mesh)
    train_step, eval_step = objective.make_steps(config, mesh, log)
    batch_sharding = objective.batch_sharding(config, mesh)
    tokenizer = load_tokenizer(config)
    _check_vocab(config, tokenizer)
    flops = metrics.flops_per_token(config)
    peak, peak_source = metrics.peak_flops(config, mesh.devices.ravel().tolist())
    batch_size = config.train.global_batch_size
    tokens_per_step = objective.tokens_per_step(config)
    log(
        f"model {model.param_count(config):,} params | mesh {dict(mesh.shape)} | "
        f"{flops['model'] / 1e6:.1f} MFLOP/token (+{flops['remat'] / 1e6:.1f} remat) | "
        f"peak {peak / 1e9:.1f} GFLOP/s ({peak_source})"
    )

    # Created only now: a bad config, mesh or tokenizer leaves no empty workdir behind.
    workdir = prepare_workdir(workdir)
    manager = checkpoint.make_manager(workdir, config)
    iterator = objective.train_iterator(config, tokenizer)
    writer = metrics.Writer(workdir) if primary else None
    last: dict[str, float] = {}
    try:
        state, step = _initial_state(config, mesh, manager, iterator, tokenizer.fingerprint, log)
        evals = _eval_batches(config, tokenizer, batch_sharding) if config.eval.every_steps else {}
        score_tasks = in_loop.make(config, tokenizer, mesh, log) if evals else None

        def run_eval() -> None:
            scalars = evaluate(eval_step, state.params, evals)
            scalars["tokens_seen"] = _tokens_seen(config, step)
            last.update(scalars)
            log(metrics.eval_line(step, scalars))
            if score_tasks:
                scalars |= score_tasks(state.params)
                log(in_loop.line(step, scalars))
                last.update(scalars)
            if writer:
                writer.write(step, scalars)

        if evals and step == 0:
            run_eval()
        # Throughput is timed from the end of the first step (compilation excluded) and restarted
        # after each log line and evaluation.
        timer, timed = None, 0
        seq_len = config.train.seq_len
        saving = None  # the step of the last save started
        with _stop_signals() as stop:
            while step < config.train.steps and not stop:
                step_config = _at_length(config, step)
                if step_config.train.seq_len != seq_len:
                    # A new row length (train.context_schedule): its first step compiles.
                    seq_len = step_config.train.seq_len
                    flops = metrics.flops_per_token(step_config)
                    tokens_per_step = objective.tokens_per_step(step_config)
                    timer, timed = None, 0
                batch = sharding.global_batch(next(iterator), batch_sharding, batch_size)
                state, step_metrics = train_step(state, batch)
                step += 1
                scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                _check_finite(config, step, scalars, log)
                del scalars["state_finite"]
                _check_save(config, manager, saving, log)
                timed += timer is not None
                done = step == config.train.steps
                restart = timer is None
                if step % config.log.every_steps == 0 or done:
                    scalars["tokens_seen"] = _tokens_seen(config, step)
                    if timed:
                        step_time = (time.perf_counter() - timer) / timed
                        scalars |= metrics.throughput(step_time, tokens_per_step, flops, peak)
                    scalars |= _data_counters(iterator)
                    last.update(scalars)
                    log(metrics.progress_line(step, config.train.steps, scalars))
                    if writer:
                        writer.write(step, scalars)
                    restart = True
                if evals and (step % config.eval.every_steps == 0 or done):
                    run_eval()
                    restart = True
                if step % config.checkpoint.every_steps == 0:
                    _check_save(config, manager, saving, log, wait=True)
                    _save(config, manager, step, state, iterator, tokenizer.fingerprint, log)
                    saving = step
                if restart:
                    timer, timed = time.perf_counter(), 0
            if stop:
                log(f"received signal {stop[0]} at step {step}: saving and exiting")
        if step != saving:
            _check_save(config, manager, saving, log, wait=True)
            _save(config, manager, step, state, iterator, tokenizer.fingerprint, log)
        _check_save(config, manager, step, log, wait=True)
        if step in manager.all_steps():
            log(f"checkpoint step {step} in {manager.directory}")
    finally:
        manager.wait_until_finished()
        manager.close()
        iterator.close()
        if writer:
            writer.close()
    return last
