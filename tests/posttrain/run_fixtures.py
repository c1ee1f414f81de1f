"""A small post-training run, straight and crashed-then-resumed, in this process (the loop's own
checkpoints and data iterator state; the crash is an exception raised from the progress log)."""

from __future__ import annotations

import jax
import numpy as np

from phi3_jax import metrics
from phi3_jax.train import loop
from phi3_jax.train import restore as restore_lib

STEPS = 4
# A model smaller than tiny and a short run: the loop, not the model, is under test.
SMALL_RUN = {
    "model": dict(hidden_size=64, intermediate_size=128, num_layers=2),
    # 8 rows: one per emulated device of the default (fsdp) mesh.
    "train": dict(steps=STEPS, global_batch_size=8, seq_len=64),
    "optim": dict(warmup_steps=1),
    "data": dict(num_workers=0),
    "log": dict(every_steps=1, peak_flops=1e10),
    "eval": dict(every_steps=0),
    "checkpoint": dict(every_steps=2),
}


class Crash(RuntimeError):
    """Stands for the process dying."""


def small_run(config):
    for section, values in SMALL_RUN.items():
        config[section].update(values)
    return config


def train_until(config, workdir, crash_after: int | None = None) -> list[str]:
    """Train in `workdir`; with `crash_after`, die right after that step's progress line."""
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if crash_after is not None and line.startswith(f"step {crash_after}/"):
            raise Crash(line)

    try:
        loop.train(config, str(workdir), log=log)
    except Crash:
        pass
    return lines


# Train scalars that are a function of the state and data alone (not timing).
DETERMINISTIC = ("loss", "grad_norm", "param_norm", "learning_rate", "tokens")


def train_losses(workdir) -> dict[int, tuple]:
    """step -> the deterministic train scalars of that step's metrics line, data counters and DPO
    metrics included (a resumed run's lines replace earlier ones)."""
    return {
        line["step"]: tuple(
            sorted(
                (k, v)
                for k, v in line.items()
                if k in DETERMINISTIC or k.startswith(("data/", "dpo/"))
            )
        )
        for line in metrics.read_metrics(str(workdir))
        if "loss" in line
    }


def assert_resume_is_bitwise_exact(config, tmp_path) -> list[str]:
    """Straight run vs. a run that dies after step 3 (checkpoint 2 saved) and is resumed."""
    straight = train_until(config, tmp_path / "straight")
    assert train_until(config, tmp_path / "crashed", crash_after=3)[-1].startswith("step 3/")
    resumed = train_until(config, tmp_path / "crashed")
    assert any("resuming from step 2" in line for line in resumed), resumed
    expected, got = train_losses(tmp_path / "straight"), train_losses(tmp_path / "crashed")
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in (3, 4):
        assert got[step] == expected[step], step  # bitwise: exact float equality
    _, a, _ = restore_lib.restore_params_of_run(str(tmp_path / "straight"), STEPS)
    _, b, _ = restore_lib.restore_params_of_run(str(tmp_path / "crashed"), STEPS)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    return straight
