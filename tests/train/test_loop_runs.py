"""Whole runs of the loop, in-process on the 8 emulated CPU devices and the bundled corpus: the
tiny model's held-out loss falling."""

from __future__ import annotations

import os

import pytest
from train_fixtures import run_config

from phi3_jax import metrics
from phi3_jax.train import loop

# Measured on this run's configuration (40 steps): held-out loss 10.413 at step 0, 7.228 at step
# 40, a drop of 3.18 nats; the test asks for 2.5 (fp32 summation order may move it slightly).
HELD_OUT_DROP = 2.5


# 24-48 s on CI's 2 cores: kept out of the 15-minute default suite (make test-all runs it).
@pytest.mark.slow
def test_tiny_model_held_out_loss_falls_on_the_bundled_corpus(tmp_path):
    steps = 40
    config = run_config(
        **{
            "model.num_layers": 2,
            "train.steps": steps,
            "train.seq_len": 64,
            "optim.lr": 3e-3,
            "optim.warmup_steps": 5,
            "log.every_steps": 20,
            "eval.every_steps": steps,
            "data.eval_batches": 1,
            "checkpoint.every_steps": steps,
        }
    )
    workdir = str(tmp_path / "run")
    final = loop.train(config, workdir, log=lambda _: None)
    evals = [line for line in metrics.read_metrics(workdir) if "eval_loss" in line]
    assert [line["step"] for line in evals] == [0, steps]
    drop = evals[0]["eval_loss"] - evals[1]["eval_loss"]
    assert drop >= HELD_OUT_DROP, (evals[0]["eval_loss"], evals[1]["eval_loss"])
    assert final["eval_loss"] == evals[1]["eval_loss"]
    assert os.listdir(os.path.join(workdir, metrics.TB_DIR))
