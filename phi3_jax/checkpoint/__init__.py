"""A run's checkpoints (orbax), and their guarantees.

`make_manager`, `save`, `restore_latest`: an orbax CheckpointManager in WORKDIR/checkpoints, per
step the train state, the grain iterator's state, the config, a checksum of every array of the
state (`checkpoint.checksums`) and the tokenizer's fingerprint (a resume with another tokenizer
is refused). Restore goes through abstract targets, so a state saved on one mesh loads onto any
other, and recomputes the checksums: a checkpoint whose bytes changed on disk is damaged, and
restore falls back to the one before and sets the damaged one aside. A params-only checkpoint
(what `convert hf-to-orbax` writes and a run can start from) is `checkpoint.params`; the params
of a run read for use elsewhere are `phi3_jax.train.restore`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from phi3_jax import config as config_lib
from phi3_jax import paths
from phi3_jax.checkpoint import quiet, s3
from phi3_jax.checkpoint.checksums import array_checksums, verify_checksums

# Train checkpoints: an orbax CheckpointManager in WORKDIR/checkpoints, one directory per step
# holding the train state, the data iterator's state (grain) and the resolved config (JSON).
CHECKPOINTS_DIR = "checkpoints"
ITEMS = ("state", "data", "config", "checksums", "tokenizer")
# Model keys that decide parameter shapes: a checkpoint restores only where they agree.
SHAPE_KEYS = (
    "architecture",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "param_dtype",
)
# orbax writes a step into STEP<suffix>... and renames it once complete.
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
# grain saves one iterator state per process: data/process_I-of-N.json.
_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def brief(error: BaseException) -> str:
    """`Type: message` of an error on one short line: its first line, its middle elided when long,
    and the operating system's cause (such as "No space left on device") always kept: read from
    the error's errno, an `[Errno N]` or tensorstore's `os_error_code='N'` anywhere in the error
    or the errors it was raised from, and added where the elided line lost it."""
    text = str(error).splitlines()[0] if str(error) else ""
    if len(text) > 320:
        text = f"{text[:120]} ... {text[-180:]}"
    cause = os_error_cause(error)
    if cause and cause not in text:
        text = f"{text} [{cause}]"
    return f"{type(error).__name__}: {text}"


_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'|\[Errno (\d+)\]")


def os_error_cause(error: BaseException | None) -> str | None:
    """`os.strerror` of the first OS error code in `error` or its causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "errno", None)
        found = _OS_ERROR_CODE.search(str(error))
        if isinstance(code, int) or found:
            return os.strerror(code if isinstance(code, int) else int(found[1] or found[2]))
        error = error.__cause__ or error.__context__
    return None


class NonFiniteStateError(ValueError):
    """A state holding NaN or inf was given to save; the message names its arrays."""


class NotRestorableHereError(config_lib.ConfigError):
    """A good checkpoint that this run cannot continue from (e.g. another process count)."""


def orbax_path(path: str) -> str:
    """`path` (absolute, or a gs:// or s3:// URL) for orbax. orbax-checkpoint writes arrays on
    local paths and gs:// only; for an s3:// path this installs `checkpoint.s3`, which gives its
    arrays tensorstore's s3 driver (a ValueError naming the path if orbax is not the version
    the adapter was written for)."""
    resolved = paths.resolve(path)
    if resolved.startswith("s3://"):
        try:
            s3.install()
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return resolved


def _atomicity(directory: str) -> ocp.options.AtomicityOptions | None:
    """How a step is marked complete: on s3:// by its commit file (`s3.ATOMICITY`), elsewhere
    orbax's default (a renamed temporary directory locally, the commit file on gs://)."""
    return s3.ATOMICITY if directory.startswith("s3://") else None


def make_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The run's checkpoint manager: async saves (checkpoint.async_save), max_to_keep kept.

    From here on, what a failed save's aborted writes print is silenced (`quiet`), so the
    failure's one line (`save_error`) is all a full disk shows."""
    quiet.quiet_aborted_writes()
    directory = paths.join(orbax_path(workdir), CHECKPOINTS_DIR)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.checkpoint.max_to_keep,
        enable_async_checkpointing=config.checkpoint.async_save,
        create=True,
        atomicity_options=_atomicity(directory),
    )
    return ocp.CheckpointManager(directory, item_names=ITEMS, options=options)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state,
    iterator,
    config: ml_collections.ConfigDict,
    tokenizer_fingerprint: str,
) -> bool:
    """Start saving `step` (in the background when async); False if it is already saved.

    The state's checksums are computed first (before a next step can donate its buffers); a
    state holding a NaN or inf is never saved (NonFiniteStateError)."""
    if step in manager.all_steps():
        return False
    checksums, non_finite = array_checksums(state)
    if non_finite:
        raise NonFiniteStateError(
            f"step {step}: not saved, the state holds NaN or inf in {', '.join(non_finite[:3])}"
            + (f" and {len(non_finite) - 3} more arrays" if len(non_finite) > 3 else "")
        )
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            config=ocp.args.JsonSave(json.loads(config_lib.to_json(config))),
            checksums=ocp.args.JsonSave(checksums),
            tokenizer=ocp.args.JsonSave({"fingerprint": tokenizer_fingerprint}),
        ),
        force=True,
    )


class SaveError(OSError):
    """A checkpoint could not be written; the message names the directory and its free space."""


def save_error(manager: ocp.CheckpointManager, step: int, error: BaseException) -> SaveError:
    """The one-line SaveError of a failed save of `step`: what failed, where, the free space."""
    # A bucket has no free space to report (and may be the thing that stopped answering).
    free = (
        ""
        if paths.is_remote(manager.directory)
        else f"{shutil.disk_usage(manager.directory).free / 2**20:.1f} MiB free there; "
    )
    kept = manager.latest_step()
    return SaveError(
        f"checkpoint: saving step {step} in {manager.directory} failed ({brief(error)}); "
        f"{free}"
        + (f"the last checkpoint, step {kept}, is kept" if kept is not None else "none saved yet")
    )


def finished_save_failed(manager: ocp.CheckpointManager, wait: bool = False) -> Exception | None:
    """The error of the last background save once it has ended in one (None while it runs, when
    it succeeded, or once reported); `wait` waits for it to end. The partial directory a failed
    save left is removed to free the space, where the storage still answers (a bucket that
    does not keeps it; orbax replaces an unfinished step directory when it saves that step)."""
    if not wait and manager.is_saving_in_progress():
        return None
    try:
        manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 - whatever it was, the save did not complete.
        if jax.process_index() == 0:
            with contextlib.suppress(OSError):
                for name in incomplete_steps(manager):
                    (manager.directory / name).rmtree(missing_ok=True)
        return error
    return None


def incomplete_steps(manager: ocp.CheckpointManager) -> list[str]:
    """Directories of saves that never completed (the process died while writing them): locally
    orbax's temporary STEP<suffix> directories, on a bucket (written in place) the STEP
    directories without orbax's commit file."""
    if not manager.directory.is_dir():  # a bucket has no empty directories: none saved yet
        return []
    if not paths.is_remote(manager.directory):
        return sorted(p.name for p in manager.directory.iterdir() if _TMP_SUFFIX in p.name)
    return sorted(
        p.name
        for p in manager.directory.iterdir()
        if p.name.isdigit() and not (p / ocp.path.atomicity.COMMIT_SUCCESS_FILE).exists()
    )


def check_model(saved: dict, config: ml_collections.ConfigDict, where: str) -> None:
    """Raise ConfigError if a checkpoint's model (its saved config) has other shapes."""
    diffs = [
        f"model.{key}={saved['model'][key]!r} (config: {config.model[key]!r})"
        for key in SHAPE_KEYS
        if saved["model"][key] != config.model[key]
    ]
    if diffs:
        raise config_lib.ConfigError(
            f"{where}: the checkpoint's model has other shapes than the config: {', '.join(diffs)};"
            " train with the checkpoint's model settings or use a new --workdir"
        )


def check_process_count(manager: ocp.CheckpointManager, step: int) -> None:
    """Raise NotRestorableHereError if `step`'s data iterator state is of another process count.

    Each process reads its own part of every shard, so a data position is per process and has no
    equivalent on another count; the state itself would restore on any count."""
    data_dir = manager.directory / str(step) / "data"
    counts = {int(m.group(2)) for p in data_dir.iterdir() if (m := _DATA_FILE.fullmatch(p.name))}
    here = jax.process_count()
    if counts and here not in counts:
        raise NotRestorableHereError(
            f"{data_dir.parent}: written by {sorted(counts)[0]} processes, this run has {here}: "
            "the data position is per process and does not carry over to another process count; "
            f"resume with {sorted(counts)[0]} processes (the checkpoint is fine and left as it is)"
        )


def check_tokenizer(saved: dict, config: ml_collections.ConfigDict, fingerprint: str, where: str):
    """Raise NotRestorableHereError if the checkpoint's tokenizer is not this run's (by its
    fingerprint: the files' bytes and special ids, wherever they are)."""
    if saved["tokenizer"]["fingerprint"] == fingerprint:
        return
    before = saved["config"]["data"]["tokenizer"]
    now = config.data.tokenizer
    raise NotRestorableHereError(
        f"{where}: trained with the tokenizer {before['kind']}:{before['path']} (fingerprint "
        f"{saved['tokenizer']['fingerprint'][:16]}), this run has {now.kind}:{now.path} "
        f"(fingerprint {fingerprint[:16]}); its ids would mean other text: resume with the run's "
        "tokenizer (data.tokenizer.kind/path) or use a new --workdir"
    )


def _restore_step(
    manager: ocp.CheckpointManager, step: int, abstract_state, iterator, config, fingerprint
):
    where = paths.join(manager.directory, str(step))
    saved = manager.restore(
        step,
        args=ocp.args.Composite(
            config=ocp.args.JsonRestore(),
            checksums=ocp.args.JsonRestore(),
            tokenizer=ocp.args.JsonRestore(),
        ),
    )
    check_model(saved["config"], config, where)
    check_tokenizer(saved, config, fingerprint, where)
    check_process_count(manager, step)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    verify_checksums(restored["state"], saved["checksums"], where)
    return restored["state"]


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_state,
    iterator,
    config: ml_collections.ConfigDict,
    tokenizer_fingerprint: str,
    log: Callable[[str], None] = print,
):
    """(state, step) of the newest checkpoint that restores, or None without checkpoints.

    The state lands in `abstract_state`'s shardings (any mesh); `iterator` is set to the saved
    data position. A checkpoint that fails to read or whose arrays do not match their checksums
    falls back to the one before, saying so in one line; once one restores, the damaged ones are
    set aside. One whose model shapes, tokenizer (`tokenizer_fingerprint`) or process count
    disagree with this run is an error (a ConfigError), and nothing is moved.
    """
    for name in incomplete_steps(manager):
        log(f"checkpoint: ignoring {name}, a save that never completed")
    steps = sorted(manager.all_steps(), reverse=True)
    corrupted = []
    for i, step in enumerate(steps):
        try:
            state = _restore_step(
                manager, step, abstract_state, iterator, config, tokenizer_fingerprint
            )
        except config_lib.ConfigError:
            raise
        except Exception as error:  # Whatever failed to read, this checkpoint is unusable.
            then = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
            log(
                f"checkpoint: step {step} in {manager.directory} is corrupted ({brief(error)}); {then}"
            )
            corrupted.append(step)
            continue
        _set_aside(manager, corrupted, log)
        return state, step
    if steps:
        raise RuntimeError(f"{manager.directory}: no checkpoint could be restored (see above)")
    return None


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], log: Callable[[str], None]):
    """Renames corrupted steps to corrupted-STEP (corrupted-STEP.2, ... when that name is taken;
    kept for inspection), so they can be re-saved."""
    for step in steps:
        target, n = manager.directory / f"corrupted-{step}", 1
        while target.exists():
            n += 1
            target = manager.directory / f"corrupted-{step}.{n}"
        if jax.process_index() == 0:
            (manager.directory / str(step)).rename(target)
        log(f"checkpoint: moved the corrupted step {step} to {target}")
    if steps:
        manager.reload()


def open_run(workdir: str, step: int | None):
    """(read-only manager, step, its saved config and checksums) of a run's checkpoint
    (default: the latest)."""
    directory = paths.join(orbax_path(workdir), CHECKPOINTS_DIR)
    if not paths.path(directory).is_dir():
        raise FileNotFoundError(f"{directory}: not found (not a training run's workdir?)")
    options = ocp.CheckpointManagerOptions(read_only=True, atomicity_options=_atomicity(directory))
    manager = ocp.CheckpointManager(directory, item_names=ITEMS, options=options)
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"{directory}: no checkpoint")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (steps: {steps})")
    saved = manager.restore(
        step,
        args=ocp.args.Composite(config=ocp.args.JsonRestore(), checksums=ocp.args.JsonRestore()),
    )
    return manager, step, saved
